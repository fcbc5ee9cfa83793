export * from './manifest.js';
export * from './errors.js';
export * from './foreign-package.js';
export * from './archive.js';
export * from './create.js';
export * from './open.js';
export * from './package-file.js';
export { descriptorLookupWorks, openFolderByDescriptors, type FolderWalkOptions } from './package-path.js';
