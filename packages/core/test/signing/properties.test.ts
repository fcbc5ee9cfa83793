import { writeFile, readFile, appendFile } from 'node:fs/promises';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  PackageVerificationError,
  SIGNATURE_FILE,
  createIntermediateCa,
  createRootCa,
  generateKeyPair,
  signPackage,
  verifyPackage,
  type KeyPairPem,
  type Signer,
  type TrustPolicy,
  type VerifiedSignature,
} from '../../src/signing/index.js';
import {
  certificateSigner,
  codeSigningLeaf,
  expectRejected,
  sha256Hex,
  tempDirs,
  writeTree,
} from './helpers.js';

const dirs = tempDirs();
afterAll(() => dirs.cleanup());

let keys: KeyPairPem;
beforeAll(() => {
  keys = generateKeyPair('ed25519');
});

// Names mixing ASCII, punctuation that sorts around '/', accented, CJK and astral characters.
const nameChar = fc.constantFrom('a', 'b', 'Z', '0', '-', '_', '.', 'é', '日', '😀');
const segment = fc
  .array(nameChar, { minLength: 1, maxLength: 6 })
  .map((chars) => chars.join(''))
  .filter((s) => s !== '.' && s !== '..');
const fileTree = fc
  .uniqueArray(
    fc.record({
      path: fc.array(segment, { minLength: 1, maxLength: 3 }).map((parts) => parts.join('/')),
      content: fc.uint8Array({ maxLength: 4096 }),
    }),
    { selector: (f) => f.path, minLength: 1, maxLength: 8 },
  )
  // A path cannot be both a file and a folder; model.sig at the top is the signature's own name.
  .filter((files) =>
    files.every((f) => f.path !== SIGNATURE_FILE && !files.some((g) => g.path.startsWith(`${f.path}/`))),
  );

describe('random file trees', () => {
  it('sign → verify round-trips, and a flipped byte in any one file is caught naming that file', async () => {
    await fc.assert(
      fc.asyncProperty(fileTree, fc.nat(), fc.nat(), async (files, pick, offset) => {
        const dir = await dirs.make();
        await writeTree(dir, Object.fromEntries(files.map((f) => [f.path, f.content])));
        await signPackage(dir, { method: 'key', privateKeyPem: keys.privateKeyPem });
        const verified = await verifyPackage(dir, { publicKeysPem: [keys.publicKeyPem] });
        expect(new Map(verified.files.map((f) => [f.path, f.sha256]))).toEqual(
          new Map(files.map((f) => [f.path, sha256Hex(f.content)])),
        );

        const victim = files[pick % files.length] as (typeof files)[number];
        const path = join(dir, ...victim.path.split('/'));
        if (victim.content.length === 0) await appendFile(path, 'x');
        else {
          const bytes = await readFile(path);
          const i = offset % bytes.length;
          bytes[i] = (bytes[i] as number) ^ 0x80;
          await writeFile(path, bytes);
        }
        const e = await expectRejected(
          verifyPackage(dir, { publicKeysPem: [keys.publicKeyPem] }),
          'file-modified',
        );
        expect(e.path).toBe(victim.path);
      }),
      { numRuns: 25 },
    );
  });
});

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
type PathStep = string | number;

/** Every node of a JSON document, by its path from the root. */
function nodePaths(value: Json, prefix: PathStep[] = []): PathStep[][] {
  const out: PathStep[][] = [prefix];
  if (Array.isArray(value)) value.forEach((v, i) => out.push(...nodePaths(v, [...prefix, i])));
  else if (value && typeof value === 'object')
    for (const [k, v] of Object.entries(value)) out.push(...nodePaths(v, [...prefix, k]));
  return out;
}

function getAt(doc: Json, path: PathStep[]): Json {
  return path.reduce<Json>((node, step) => (node as Record<string, Json>)[step as string] as Json, doc);
}

interface Mutation {
  op: 'delete' | 'replace' | 'flip-char' | 'add-key';
  /** Apply to the decoded statement (then re-encode the payload) instead of the bundle. */
  inStatement: boolean;
  node: number;
  value: Json;
  index: number;
  char: string;
  key: string;
}

const mutation: fc.Arbitrary<Mutation> = fc.record({
  op: fc.constantFrom('delete', 'replace', 'flip-char', 'add-key'),
  inStatement: fc.boolean(),
  node: fc.nat(),
  value: fc.jsonValue({ maxDepth: 2 }) as fc.Arbitrary<Json>,
  index: fc.nat(),
  char: fc.constantFrom('A', 'z', '0', '+', '/', '=', 'é', ' ', '"', '\\'),
  key: fc.oneof(
    fc.constantFrom('keyid', 'hint', 'extra', 'rawBytes', '__proto__'),
    fc.string({ maxLength: 6 }),
  ),
});

/** Applies `m` to a copy of `doc`; returns undefined when the mutation does not change anything. */
function mutate(doc: Json, m: Mutation): Json | undefined {
  const copy = JSON.parse(JSON.stringify(doc)) as Json;
  const paths = nodePaths(copy);
  const path = paths[m.node % paths.length] as PathStep[];
  const node = getAt(copy, path);
  const parent = path.length ? getAt(copy, path.slice(0, -1)) : undefined;
  const last = path.at(-1);
  const set = (value: Json | undefined) => {
    if (parent === undefined) return value;
    if (Array.isArray(parent)) {
      if (value === undefined) parent.splice(last as number, 1);
      else parent[last as number] = value;
    } else if (value === undefined) delete (parent as Record<string, Json>)[last as string];
    else (parent as Record<string, Json>)[last as string] = value;
    return copy;
  };
  let result: Json | undefined;
  switch (m.op) {
    case 'delete':
      result = parent === undefined ? null : set(undefined);
      break;
    case 'replace':
      result = set(m.value);
      break;
    case 'flip-char': {
      if (typeof node !== 'string' || node.length === 0) return undefined;
      const i = m.index % node.length;
      if (node[i] === m.char) return undefined;
      result = set(node.slice(0, i) + m.char + node.slice(i + 1));
      break;
    }
    case 'add-key':
      if (!node || typeof node !== 'object' || Array.isArray(node) || Object.hasOwn(node, m.key))
        return undefined;
      Object.defineProperty(node, m.key, {
        value: m.value,
        enumerable: true,
        writable: true,
        configurable: true,
      });
      result = copy;
      break;
  }
  return JSON.stringify(result) === JSON.stringify(doc) ? undefined : result;
}

/**
 * Mutations that leave what is verified unchanged: fields the bundle format carries but no verifier can
 * check offline or that DSSE leaves unsigned by design (`keyid`), and dropping the empty tlogEntries list.
 * For these, verifying may succeed, but must give exactly the original result.
 */
function isBenign(original: Json, mutated: Json): boolean {
  const strip = (doc: Json) => {
    const copy = JSON.parse(JSON.stringify(doc)) as {
      verificationMaterial?: { tlogEntries?: unknown };
      dsseEnvelope?: { signatures?: { keyid?: unknown }[] };
    };
    if (
      Array.isArray(copy.verificationMaterial?.tlogEntries) &&
      copy.verificationMaterial.tlogEntries.length === 0
    )
      delete copy.verificationMaterial.tlogEntries;
    for (const s of copy.dsseEnvelope?.signatures ?? []) if (typeof s?.keyid === 'string') delete s.keyid;
    return JSON.stringify(copy);
  };
  return strip(original) === strip(mutated);
}

describe('random mutations of model.sig', () => {
  const cases: {
    method: string;
    dir: string;
    trust: TrustPolicy;
    bundle: Json;
    baseline: VerifiedSignature;
  }[] = [];

  beforeAll(async () => {
    const root = createRootCa({ commonName: 'Root', validityDays: 30, keyType: 'ecdsa-p256' });
    const intermediate = createIntermediateCa({
      issuer: root,
      commonName: 'Int',
      validityDays: 30,
      keyType: 'ed25519',
    });
    const leaf = codeSigningLeaf(intermediate, 'Pub');
    const p256 = generateKeyPair('ecdsa-p256');
    const setups: [string, Signer, TrustPolicy][] = [
      ['key', { method: 'key', privateKeyPem: p256.privateKeyPem }, { publicKeysPem: [p256.publicKeyPem] }],
      ['certificate', certificateSigner(leaf, intermediate), { rootCertificatesPem: [root.certificatePem] }],
    ];
    for (const [method, signer, trust] of setups) {
      const dir = await dirs.make();
      await writeTree(dir, { 'model.onnx': 'weights', 'manifest.json': '{}', 'sub/extra.bin': 'e' });
      await signPackage(dir, signer);
      const bundle = JSON.parse(await readFile(join(dir, SIGNATURE_FILE), 'utf8')) as Json;
      cases.push({ method, dir, trust, bundle, baseline: await verifyPackage(dir, trust) });
    }
  });

  it('never verify (unless harmless, then with the original result) and never throw anything but PackageVerificationError', async () => {
    let rejected = 0;
    await fc.assert(
      fc.asyncProperty(fc.nat(), mutation, async (which, m) => {
        const c = cases[which % cases.length] as (typeof cases)[number];
        let mutated: Json | undefined;
        if (m.inStatement) {
          const envelope = (c.bundle as { dsseEnvelope: { payload: string } }).dsseEnvelope;
          const statement = JSON.parse(Buffer.from(envelope.payload, 'base64').toString('utf8')) as Json;
          const changed = mutate(statement, m);
          if (changed === undefined) return;
          mutated = JSON.parse(JSON.stringify(c.bundle)) as Json;
          (mutated as { dsseEnvelope: { payload: string } }).dsseEnvelope.payload = Buffer.from(
            JSON.stringify(changed, null, 2),
          ).toString('base64');
        } else {
          mutated = mutate(c.bundle, m);
          if (mutated === undefined) return;
        }
        await writeFile(join(c.dir, SIGNATURE_FILE), JSON.stringify(mutated, null, 2));
        const outcome = await verifyPackage(c.dir, c.trust).then(
          (result) => ({ ok: true as const, result }),
          (error: unknown) => ({ ok: false as const, error }),
        );
        if (outcome.ok) {
          // Only a harmless change to the bundle may still verify; any change to the signed statement may not.
          expect(!m.inStatement && isBenign(c.bundle, mutated), `verified after ${JSON.stringify(m)}`).toBe(
            true,
          );
          expect(outcome.result).toEqual(c.baseline);
        } else {
          expect(outcome.error).toBeInstanceOf(PackageVerificationError);
          rejected++;
        }
      }),
      { numRuns: 300 },
    );
    // The generator is not degenerate: most runs produce a real mutation that is rejected.
    expect(rejected).toBeGreaterThan(150);
    for (const c of cases) {
      await writeFile(join(c.dir, SIGNATURE_FILE), JSON.stringify(c.bundle));
      expect(await verifyPackage(c.dir, c.trust)).toEqual(c.baseline);
    }
  });
});
