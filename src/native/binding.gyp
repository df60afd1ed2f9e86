{
  "targets": [
    {
      "target_name": "udpfast",
      "sources": ["udpfast.c"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
      "conditions": [["OS!='linux'", {"type": "none"}]]
    }
  ]
}
