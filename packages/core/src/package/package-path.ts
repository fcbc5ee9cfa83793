import { constants, type Stats } from 'node:fs';
import { lstat, open, stat, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { PackageFileError } from './errors.js';

/**
 * Opening a file inside a package folder without following a symlink anywhere below the folder: `O_NOFOLLOW`
 * alone checks only the last component, so `model/` linked to `/etc` would still be followed to `/etc/x`.
 *
 * Where the kernel has /proc (Linux), each folder is opened in turn (`O_DIRECTORY | O_NOFOLLOW`) and the next
 * component looked up in that open folder through `/proc/self/fd/<fd>/<name>` (the kernel jumps to the folder the
 * descriptor holds, like openat(2), which Node lacks): no step can follow a link, and a folder swapped for a link
 * meanwhile is not looked at. Elsewhere, each component is lstat'ed (no links), the file opened, and every
 * component lstat'ed again: each folder must be the same one (device and inode), and the file the one opened.
 * That catches a link that was there before or after the open; a writer of the package swapping one in only
 * during the open and out again is beyond a path-based check.
 */

/** Read-only; never through a symlink (the last component); an open that cannot block on a FIFO. */
const FILE_FLAGS = constants.O_RDONLY | (constants.O_NOFOLLOW ?? 0) | (constants.O_NONBLOCK ?? 0);
/** A folder of the package, never a link to one. */
const FOLDER_FLAGS = FILE_FLAGS | (constants.O_DIRECTORY ?? 0);
/** Where Linux shows this process's descriptors, each as a link to what it holds. */
const PROC_SELF_FD = '/proc/self/fd';
/** The package folder itself: it may be a link (whoever names it could name its target; see openModelPackage). */
const ROOT_FLAGS = constants.O_RDONLY | (constants.O_DIRECTORY ?? 0) | (constants.O_NONBLOCK ?? 0);

/**
 * The components of a package-relative posix path (`model/model.onnx`): plain names only. An absolute path, an
 * empty, `.` or `..` component, a NUL or a backslash is refused: each could name something outside the package.
 * `label` names the path in messages.
 */
export function packagePathComponents(path: string, label = path): string[] {
  const reason = badPackagePathReason(path);
  if (reason)
    throw new PackageFileError(
      'bad-path',
      label,
      `${label} is not a path inside the package (${reason}); expected a relative path of plain names, such as model/model.onnx`,
    );
  return path.split('/');
}

/** Why `path` cannot be a package-relative path of a file, or undefined when it can. */
export function badPackagePathReason(path: string): string | undefined {
  if (path.length === 0) return 'it is empty';
  if (path.includes('\0')) return 'it contains a NUL character';
  if (path.includes('\\')) return 'it contains a backslash';
  if (path.startsWith('/')) return 'it is absolute';
  if (path.split('/').some((part) => part === '' || part === '.' || part === '..'))
    return 'it has an empty, "." or ".." component';
  return undefined;
}

/**
 * Opens `path` (package-relative, see packagePathComponents) under the package folder `root` for reading, with no
 * symlink followed below `root` (see the top of this file), and without blocking on a FIFO. The caller checks
 * what it opened (fstat) and closes it. `label` names the path in messages (default `path`).
 * Errors: PackageFileError, whose message names the path and, for a folder on the way, which one.
 */
export async function openPackagePath(root: string, path: string, label = path): Promise<FileHandle> {
  const components = packagePathComponents(path, label);
  let rootHandle: FileHandle;
  try {
    rootHandle = await open(root, ROOT_FLAGS);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code ?? 'an I/O error';
    throw new PackageFileError(
      code === 'ENOENT' || code === 'ENOTDIR' ? 'missing' : 'unreadable',
      label,
      `${label} cannot be read: its package folder cannot be opened (${code}); expected an extracted package folder`,
    );
  }
  try {
    if (await descriptorLookupWorks(rootHandle))
      return await openByDescriptors(rootHandle, components, label);
  } finally {
    await rootHandle.close();
  }
  return openByPathChecked(root, components, label);
}

/**
 * openPackagePath's way without /proc (see the top of this file), on any system: each component lstat'ed before
 * and after the open. Exported for its tests (on Linux, openPackagePath never takes it).
 */
export async function openPackagePathChecked(root: string, path: string, label = path): Promise<FileHandle> {
  return openByPathChecked(root, packagePathComponents(path, label), label);
}

/** Whether this system resolves `<descriptors>/<fd>/name` (Linux with /proc mounted) for the folder held. */
export async function descriptorLookupWorks(
  folder: FileHandle,
  descriptors = PROC_SELF_FD,
): Promise<boolean> {
  return stat(`${descriptors}/${folder.fd}/.`).then(
    () => true,
    () => false,
  );
}

export interface FolderWalkOptions {
  /** Where this process's descriptors appear as links (default /proc/self/fd; check descriptorLookupWorks first). */
  descriptors?: string;
  /**
   * Called with each folder held, `root` first, before a name is looked up in it (not with the folder returned):
   * a check on every folder on the way. An error it throws stops the walk and is thrown as it is.
   */
  visit?: (folder: FileHandle) => Promise<void>;
  /** How messages name the path; default the components joined with "/". */
  label?: string;
}

/**
 * Opens the folder that `components` (plain names) name below the folder `root` holds, the way openPackagePath
 * opens a package file: each component looked up in the folder held before it, no link followed anywhere, and
 * `visit` asked about each folder held on the way. Resolves with the folder opened (the caller closes it; with
 * no components, a second descriptor of `root`); `root` stays open. Errors: PackageFileError: 'missing' (a
 * component is absent, or one on the way is not a folder), 'not-regular' (the last is there but not a folder),
 * 'symlink' (a component is a link), 'unreadable' (any other failure); or what `visit` throws.
 */
export async function openFolderByDescriptors(
  root: FileHandle,
  components: readonly string[],
  options: FolderWalkOptions = {},
): Promise<FileHandle> {
  const label = options.label ?? (components.join('/') || '.');
  return openByDescriptors(root, components, label, { ...options, want: 'folder' });
}

/**
 * Each component opened inside the folder opened before it (see the top of this file); the last as a file or,
 * for openFolderByDescriptors, as a folder.
 */
async function openByDescriptors(
  root: FileHandle,
  components: readonly string[],
  label: string,
  options: Omit<FolderWalkOptions, 'label'> & { want: 'file' | 'folder' } = { want: 'file' },
): Promise<FileHandle> {
  const descriptors = options.descriptors ?? PROC_SELF_FD;
  let folder = root;
  try {
    for (const [i, name] of components.entries()) {
      const last = i === components.length - 1;
      await options.visit?.(folder);
      const inFolder = `${descriptors}/${folder.fd}/${name}`;
      let next: FileHandle;
      try {
        next = await open(inFolder, last && options.want === 'file' ? FILE_FLAGS : FOLDER_FLAGS);
      } catch (error) {
        // What is there, for the message only: nothing is opened or followed through it.
        const found = await lstat(inFolder).catch(() => undefined);
        throw pathFailure(error, label, found, components.slice(0, i + 1).join('/'), last, options.want);
      }
      if (folder !== root) await folder.close();
      folder = next;
    }
    return folder === root ? await open(`${descriptors}/${root.fd}`, ROOT_FLAGS) : folder;
  } catch (error) {
    if (folder !== root) await folder.close();
    throw error;
  }
}

/** Without /proc: each component checked before and after the open (see the top of this file). */
async function openByPathChecked(root: string, components: string[], label: string): Promise<FileHandle> {
  const paths = components.map((_, i) => join(root, ...components.slice(0, i + 1)));
  const folders = await checkFolders(paths.slice(0, -1), components, label);
  let handle: FileHandle;
  try {
    handle = await open(paths.at(-1)!, FILE_FLAGS);
  } catch (error) {
    const found = await lstat(paths.at(-1)!).catch(() => undefined);
    throw pathFailure(error, label, found, components.join('/'), true);
  }
  try {
    const opened = await handle.stat();
    const again = await checkFolders(paths.slice(0, -1), components, label);
    const file = await lstat(paths.at(-1)!).catch(() => undefined);
    if (again.some((st, i) => !sameFile(st, folders[i]!)) || file === undefined || !sameFile(file, opened))
      throw new PackageFileError(
        'symlink',
        label,
        `${label} changed while it was being opened (a folder on its path or the file itself was replaced); expected a package folder that nothing else writes while it is read`,
      );
    return handle;
  } catch (error) {
    await handle.close();
    throw error;
  }
}

/** lstat of each folder on the way: each must be a folder, not a link. */
async function checkFolders(paths: string[], components: string[], label: string): Promise<Stats[]> {
  const out: Stats[] = [];
  for (const [i, path] of paths.entries()) {
    const found = await lstat(path).catch((error: unknown) => {
      throw pathFailure(error, label, undefined, components.slice(0, i + 1).join('/'));
    });
    if (!found.isDirectory())
      throw pathFailure(undefined, label, found, components.slice(0, i + 1).join('/'));
    out.push(found);
  }
  return out;
}

function sameFile(a: Stats, b: Stats): boolean {
  return a.dev === b.dev && a.ino === b.ino;
}

/**
 * The error for a component that could not be opened: `at` is the package-relative path of that component (the
 * whole path when `last`), `found` what lstat saw there, if anything.
 */
function pathFailure(
  error: unknown,
  label: string,
  found: Stats | undefined,
  at: string,
  last = false,
  want: 'file' | 'folder' = 'file',
): PackageFileError {
  const code = (error as NodeJS.ErrnoException | undefined)?.code;
  const expected = want === 'file' ? 'a regular file' : 'a folder';
  if (found?.isSymbolicLink())
    return new PackageFileError(
      'symlink',
      label,
      last
        ? `${label} is a symbolic link; expected ${expected} (links are not followed in a package)`
        : `${label} is reached through ${at}, a symbolic link; expected a folder of the package (links are not followed in a package)`,
      code,
    );
  if (found && !last && !found.isDirectory())
    return new PackageFileError(
      'missing',
      label,
      `${label} does not exist: ${at} is not a folder; expected ${expected}`,
      code,
    );
  if (found && last && want === 'folder' && !found.isDirectory())
    return new PackageFileError('not-regular', label, `${label} is not a folder; expected a folder`, code);
  if (code === 'ENOENT' || code === 'ENOTDIR')
    return new PackageFileError('missing', label, `${label} does not exist; expected ${expected}`, code);
  if (code === 'ELOOP')
    return new PackageFileError(
      'symlink',
      label,
      `${label} is a symbolic link; expected ${expected} (links are not followed in a package)`,
      code,
    );
  return new PackageFileError(
    'unreadable',
    label,
    `${label} cannot be opened (${code ?? 'an I/O error'}); expected a readable ${want === 'file' ? 'regular file' : 'folder'}`,
    code,
  );
}
