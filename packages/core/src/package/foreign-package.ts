import { opendir } from 'node:fs/promises';
import { basename } from 'node:path';

/**
 * Files at the root of a SageMaker Edge Manager package that only a Neo/DLR-compiled model has: the compiled
 * library, parameters and graph. No EdgeFleet package holds any of them.
 */
const NEO_FILES = new Set(['compiled.so', 'compiled.params', 'compiled_model.json']);
/** The file Neo writes beside them: other tools write `*.meta` files too (Unity assets), so alone it decides nothing. */
const NEO_SUFFIX = '.meta';
/** Edge Manager's manifest: named when seen, but EdgeFleet packages carry one too, so it decides nothing. */
const EDGE_MANAGER_MANIFEST = 'sagemaker_edge_manifest';
/** Entries looked at: a package root holds a handful; a huge folder costs no more than this. */
const MAX_ENTRIES_LOOKED_AT = 256;

/** Names a refusal lists, each cut to so many characters: it goes into gRPC details and log lines (grpcio's
 * default metadata limit is 8 KiB). */
const MAX_NAMES_SAID = 5;
const MAX_NAME_CHARS_SAID = 64;

/** Where the docs say how to bring an Edge Manager model over (re-export to ONNX, package, sign). */
export const MIGRATION_GUIDE = 'docs/migrating-from-edge-manager.md';

const isNeoFile = (name: string): boolean => NEO_FILES.has(name) || name.endsWith(NEO_SUFFIX);

/**
 * The Edge Manager package files at the root of `dir` (sorted; empty when it holds no compiled Neo/DLR file,
 * `*.meta` files alone included, or cannot be listed). Only names are read, never contents.
 */
export async function edgeManagerPackageFiles(dir: string): Promise<string[]> {
  const found: string[] = [];
  let compiled = false;
  let manifest = false;
  try {
    const folder = await opendir(dir);
    let seen = 0;
    // Leaving the loop early closes the folder (the iterator's return).
    for await (const entry of folder) {
      if (++seen > MAX_ENTRIES_LOOKED_AT) break;
      if (isNeoFile(entry.name)) {
        found.push(entry.name);
        compiled ||= NEO_FILES.has(entry.name);
      } else if (entry.name === EDGE_MANAGER_MANIFEST) manifest = true;
    }
  } catch {
    return [];
  }
  if (!compiled) return [];
  if (manifest) found.push(EDGE_MANAGER_MANIFEST);
  return found.sort();
}

/** Whether a file is a Neo/DLR-compiled model's (for a single file given where an ONNX model was expected). */
export function isEdgeManagerPackageFile(path: string): boolean {
  return isNeoFile(basename(path));
}

/** Says what an Edge Manager package is to EdgeFleet and what to do with it; `files` names what gave it away. */
export function edgeManagerPackageDetail(files: readonly string[]): string {
  // The compiled files first: they are what gave it away.
  const ordered = [...files].sort((a, b) => Number(!NEO_FILES.has(a)) - Number(!NEO_FILES.has(b)));
  const said = ordered
    .slice(0, MAX_NAMES_SAID)
    .sort()
    .map((name) => (name.length > MAX_NAME_CHARS_SAID ? `${name.slice(0, MAX_NAME_CHARS_SAID)}…` : name));
  const more = files.length > MAX_NAMES_SAID ? `, +${files.length - MAX_NAMES_SAID} more` : '';
  return `it is a SageMaker Edge Manager (Neo/DLR-compiled) package (${said.join(', ')}${more}), and EdgeFleet runs ONNX model packages: re-export the model to ONNX, then package and sign it (see ${MIGRATION_GUIDE})`;
}

/** A package archive given where its extracted folder was expected: by its name, as Edge Manager downloads are. */
function isPackageArchiveName(path: string): boolean {
  return /\.(?:tar\.gz|tgz|tar)$/i.test(path);
}

/** "it is a file" for a path that should have been a package folder, with how to get one from an archive. */
export function notAFolderDetail(path: string): string {
  return isPackageArchiveName(path)
    ? `it is a package archive, not a folder: extract it first (tar xzf ${path} -C <folder>, or edgefleet package extract ${path} --out <folder>) and load that folder`
    : 'it is a file';
}
