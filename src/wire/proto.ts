// The protobuf schema of proto/udprepeater.proto, parsed once from its
// embedded text (schema.ts): no file is read at import.

import protobuf from 'protobufjs';
import { UDPREPEATER_PROTO } from './schema.js';

export const protoRoot = protobuf.parse(UDPREPEATER_PROTO).root.resolveAll();
