/**
 * `npm run build`'s last step: writes the JSON Schema validators of `schemas/`, compiled by ajv,
 * as `dist/lib/validators.compiled.cjs` (lib/validators.ts explains why and how it is loaded).
 * Written to a temporary name and renamed, so a concurrent import never reads half a module.
 */
import fs from 'node:fs';
import { fileURLToPath } from 'node:url';
import { compiledValidatorsSource } from '../lib/models.js';
import { COMPILED_VALIDATORS } from '../lib/validators.js';

const dest = fileURLToPath(new URL(`../lib/${COMPILED_VALIDATORS}`, import.meta.url));
const temp = `${dest}.${process.pid}.tmp`;
fs.writeFileSync(temp, compiledValidatorsSource());
fs.renameSync(temp, dest);
