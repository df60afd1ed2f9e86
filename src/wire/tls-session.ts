// A peek into the serialized TLS session Node hands to `newSession`: OpenSSL's
// SSL_SESSION in DER, `SEQUENCE { INTEGER version (1), INTEGER ssl_version, ... }`.
// Only the protocol version is read: a TLS 1.3 session can never be resumed
// by its id (1.3 resumes with tickets), so it is not worth storing or sending.
// Pure; any input that does not have this shape gives null.

export const TLS1_2 = 0x0303;
export const TLS1_3 = 0x0304;

/** The session's protocol version (e.g. 0x0303 for TLS 1.2), or null when the bytes are not an SSL_SESSION. */
export function sessionProtocol(der: Uint8Array): number | null {
  if (der.length < 2 || der[0] !== 0x30) return null;
  let at = 2;
  const len = der[1]!;
  if (len & 0x80) {
    const n = len & 0x7f;
    if (n < 1 || n > 2) return null;
    at += n;
  }
  // INTEGER 1 (the ASN.1 format's version), then INTEGER ssl_version (2 bytes).
  if (der.length < at + 7) return null;
  if (der[at] !== 0x02 || der[at + 1] !== 0x01 || der[at + 2] !== 0x01) return null;
  if (der[at + 3] !== 0x02 || der[at + 4] !== 0x02) return null;
  return (der[at + 5]! << 8) | der[at + 6]!;
}
