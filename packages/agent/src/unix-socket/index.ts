// Unix socket files: checking a path, binding with the right mode from the first moment, removing our own.
export {
  bindUnixSocket,
  prepareSocketPath,
  removeOwnSocketFile,
  socketAnswers,
  SocketPathError,
  type SocketPathOptions,
} from './socket-file.js';
