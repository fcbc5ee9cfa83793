export {
  backupSqlite,
  restoreSqlite,
  inspectStateFile,
  BackupError,
  type BackupResult,
  type RestoreResult,
} from './sqlite-backup.js';
export { registerBackupCommands, postgresBackupGuidance } from './backup-command.js';
