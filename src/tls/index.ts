// `udprepeater/tls`: a TLS session cache for Node.js servers that joins a
// udprepeater channel (README, "TLS session resumption").

export { MAX_KEY_BYTES, SessionCache, type AttachOptions, type SessionCacheOptions, type SessionCacheStats, sessionIdContext } from './session-cache.js';
export { registerSessionCacheMetrics } from './metrics.js';
export { ConfigError } from '../base/errors.js';
