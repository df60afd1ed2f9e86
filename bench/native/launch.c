/* launch: runs a bench child so it can never outlive the driver.
 *   launch [--cpu LIST] -- PROGRAM ARGS...
 * Sets PR_SET_PDEATHSIG=SIGKILL (kept across exec, so the program itself,
 * with the same pid, dies with the driver), optionally pins the CPU set
 * (LIST like "1" or "0,1"), then execs PROGRAM. */
#define _GNU_SOURCE
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

int main(int argc, char **argv) {
  int i = 1;
  cpu_set_t set;
  int pin = 0;
  CPU_ZERO(&set);
  for (; i < argc && strcmp(argv[i], "--") != 0; i++) {
    if (strcmp(argv[i], "--cpu") == 0 && i + 1 < argc) {
      char *list = strdup(argv[++i]);
      for (char *t = strtok(list, ","); t; t = strtok(NULL, ",")) {
        CPU_SET(atoi(t), &set);
        pin = 1;
      }
    } else {
      fprintf(stderr, "usage: launch [--cpu LIST] -- PROGRAM ARGS...\n");
      return 2;
    }
  }
  if (i + 1 >= argc) {
    fprintf(stderr, "usage: launch [--cpu LIST] -- PROGRAM ARGS...\n");
    return 2;
  }
  if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) perror("prctl");
  if (getppid() == 1) return 1; /* the driver died before we got here */
  if (pin && sched_setaffinity(0, sizeof set, &set) != 0) perror("sched_setaffinity");
  execvp(argv[i + 1], argv + i + 1);
  perror(argv[i + 1]);
  return 127;
}
