/**
 * deploy/bundle/bundle-lock.mjs: the device bundle's dependency tree, taken from package-lock.json (what the tests
 * ran) rather than resolved afresh at build time. The bundle itself is built and checked by deploy/bundle/check.mjs.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
// @ts-expect-error -- a plain .mjs build script, no types
import { BUNDLED_WORKSPACES, bundleLock, productionClosure } from '../bundle/bundle-lock.mjs';

type LockEntry = {
  version?: string;
  dev?: boolean;
  resolved?: string;
  dependencies?: Record<string, string>;
};
type Lock = { packages: Record<string, LockEntry> };

const repoRoot = path.resolve(import.meta.dirname, '..', '..');
const repoLock = JSON.parse(readFileSync(path.join(repoRoot, 'package-lock.json'), 'utf8')) as Lock;
const closure = productionClosure(repoLock, BUNDLED_WORKSPACES) as Map<string, string>;

describe("the device bundle's lock", () => {
  it('holds the production packages of agent, cli and core where the repository has them, no dev package', () => {
    expect(closure.get('node_modules/fastify')).toBe('node_modules/fastify');
    expect(closure.get('packages/agent')).toBe('node_modules/@edgefleet/agent');
    for (const lockPath of closure.keys()) expect(repoLock.packages[lockPath]?.dev, lockPath).not.toBe(true);
    // The server is not bundled, nor its own nested packages.
    expect([...closure.keys()].some((p) => p.startsWith('packages/server'))).toBe(false);
  });

  it("gives fastify's light-my-request the cookie the tests ran (1.x, Node >= 18), not the newest (2.x, Node >= 22)", () => {
    const lock = bundleLock(
      repoLock,
      BUNDLED_WORKSPACES,
      { name: 'b', version: '0.1.0', dependencies: {} },
      { '@edgefleet/agent': 'file:a.tgz', '@edgefleet/cli': 'file:c.tgz', '@edgefleet/core': 'file:k.tgz' },
    ) as Lock;
    expect(lock.packages['node_modules/cookie']?.version).toBe(
      repoLock.packages['node_modules/cookie']?.version,
    );
    expect(lock.packages['node_modules/cookie']?.version).toMatch(/^1\./);
    expect(lock.packages['node_modules/light-my-request/node_modules/cookie']).toBeUndefined();
    expect(lock.packages['node_modules/@edgefleet/agent']).toMatchObject({
      version: '0.1.0',
      resolved: 'file:a.tgz',
    });
    for (const [p, entry] of Object.entries(lock.packages)) {
      if (p === '' || p.startsWith('node_modules/@edgefleet/')) continue;
      expect(entry.dev, p).toBeUndefined();
    }
  });

  it('refuses a lock that lacks a package a bundled one needs, naming both', () => {
    const broken = structuredClone(repoLock);
    delete broken.packages['node_modules/fastify'];
    expect(() => productionClosure(broken, BUNDLED_WORKSPACES)).toThrow(
      /packages\/agent needs fastify, which it does not hold/,
    );
  });
});
