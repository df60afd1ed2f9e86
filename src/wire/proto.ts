// The protobuf schema shipped in proto/, loaded once with protobufjs.

import { join } from 'node:path';
import protobuf from 'protobufjs';
import { PACKAGE_ROOT } from '../base/package.js';

export const PROTO_FILE = join(PACKAGE_ROOT, 'proto', 'udprepeater.proto');
export const protoRoot = protobuf.loadSync(PROTO_FILE);
