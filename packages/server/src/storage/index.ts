export {
  openDatabase,
  DatabaseOpenError,
  DatabaseUnavailableError,
  damagedDatabaseError,
  damagedPostgresCodeOf,
  diskFaultOf,
  isDamagedDatabaseError,
  isDatabaseOutage,
  isSecretName,
  maskUrlCredentials,
  urlSecretNames,
  parseDatabaseLocation,
  pingDatabase,
  type DatabaseEngine,
  type DatabaseLocation,
  type OpenDatabaseOptions,
  type ServerDatabase,
} from './database.js';
export {
  appliedMigrations,
  hasNoSchema,
  migrateTo,
  migrateToLatest,
  migrationNames,
  MigrationError,
  NewerDatabaseError,
  newerDatabaseWords,
  recordedMigrations,
  refuseNewerDatabase,
  unknownMigrations,
} from './migrations.js';
export { isUniqueViolation, isForeignKeyViolation } from './errors.js';
export { containsIgnoringCase, containsLoosely } from './filters.js';
export { laterOf } from './later-of.js';
export {
  CLOCK_SKEW_WARN_MS,
  databaseClock,
  databaseNowMs,
  leaseClock,
  warnOfClockSkew,
  type DatabaseClock,
} from './database-clock.js';
export { pastPosition, type KeysetPosition } from './keyset.js';
export { lockingRows } from './row-lock.js';
export { claimServerSetting } from './server-settings.js';
export {
  DATABASE_IN_USE_EXIT_CODE,
  DatabaseInUseError,
  lockSqliteDatabase,
  sqliteLockFileOf,
} from './sqlite-lock.js';
export type * from './schema.js';
