// The device bundle's package-lock.json, derived from the repository's: the production dependencies of the bundled
// workspaces, at the versions and in the places `npm test` ran them, so that `npm ci` installs exactly those (a
// fresh `npm install` would take the newest matching versions of the day instead). Used by build.mjs and check.mjs.

/** The workspaces a device bundle holds, and their folders (package-lock.json's keys). */
export const BUNDLED_WORKSPACES = {
  '@edgefleet/agent': 'packages/agent',
  '@edgefleet/cli': 'packages/cli',
  '@edgefleet/core': 'packages/core',
};

/** Where Node resolves `name` from the package at lock path `from` ("" is the root): nearest node_modules up. */
export function resolveInLock(packages, from, name) {
  let dir = from;
  for (;;) {
    const candidate = dir === '' ? `node_modules/${name}` : `${dir}/node_modules/${name}`;
    if (packages[candidate] !== undefined) return candidate;
    if (dir === '') return undefined;
    const cut = dir.lastIndexOf('/node_modules/');
    if (cut >= 0) dir = dir.slice(0, cut);
    else dir = dir.includes('/') ? dir.slice(0, dir.lastIndexOf('/')) : '';
  }
}

/**
 * The lock paths (repository lock) of every package the workspaces need at run time, each mapped to its path in
 * the bundle (a workspace's own nested node_modules move under node_modules/@edgefleet/<name>).
 * `workspaces`: { '@edgefleet/agent': 'packages/agent', … }.
 */
export function productionClosure(repoLock, workspaces) {
  const packages = repoLock.packages;
  const workspaceOf = new Map(Object.entries(workspaces).map(([name, dir]) => [dir, name]));
  const bundlePath = (lockPath) => {
    for (const [dir, name] of workspaceOf) {
      if (lockPath === dir) return `node_modules/${name}`;
      if (lockPath.startsWith(`${dir}/`)) return `node_modules/${name}/${lockPath.slice(dir.length + 1)}`;
    }
    return lockPath;
  };
  const seen = new Map();
  const visit = (lockPath) => {
    if (seen.has(lockPath)) return;
    let entry = packages[lockPath];
    if (entry === undefined) throw new Error(`package-lock.json has no entry ${lockPath}`);
    if (entry.link) {
      // A workspace: its entry is under its folder.
      return visit(entry.resolved);
    }
    seen.set(lockPath, bundlePath(lockPath));
    const optional = { ...entry.optionalDependencies, ...entry.peerDependencies };
    const needed = { ...entry.dependencies, ...optional };
    for (const name of Object.keys(needed)) {
      const found = resolveInLock(packages, lockPath, name);
      if (found === undefined) {
        if (name in optional) continue;
        throw new Error(`package-lock.json: ${lockPath} needs ${name}, which it does not hold`);
      }
      visit(found);
    }
  };
  for (const dir of Object.values(workspaces)) visit(dir);
  return seen;
}

/**
 * The bundle's package-lock.json: `root` is its package.json (name, version, dependencies on the workspaces'
 * tarballs, `file:` specs relative to the bundle folder); `tarballs` maps a workspace's name to that spec.
 */
export function bundleLock(repoLock, workspaces, root, tarballs) {
  const packages = { '': { name: root.name, version: root.version, dependencies: root.dependencies } };
  for (const [lockPath, bundlePath] of productionClosure(repoLock, workspaces)) {
    const { dev: _dev, devOptional: _devOptional, peer: _peer, ...entry } = repoLock.packages[lockPath];
    const workspace = Object.entries(workspaces).find(([, dir]) => dir === lockPath)?.[0];
    packages[bundlePath] =
      workspace === undefined
        ? entry
        : // A tarball packed just now: npm reads it from its path (no recorded hash); `name` is only for aliases.
          { ...withoutName(entry), resolved: tarballs[workspace] };
  }
  return { name: root.name, version: root.version, lockfileVersion: 3, requires: true, packages };
}

function withoutName({ name: _name, ...entry }) {
  return entry;
}

/** Every package a lock installs, as { path: version } (the root and workspaces' source folders left out). */
export function lockedVersions(lock) {
  return Object.fromEntries(
    Object.entries(lock.packages)
      .filter(([path, entry]) => path.startsWith('node_modules/') && entry.version !== undefined)
      .map(([path, entry]) => [path, entry.version]),
  );
}
