export {
  CompilationJobStore,
  INTERRUPTED_IMPORT_REASON,
  SHUTDOWN_IMPORT_REASON,
  deadlineReason,
  stoppingConditionSchema,
  type StoppingCondition,
  type CompilationJobRecord,
  type CompilationJobStatus,
  type CompilationJobsOptions,
  type CreateCompilationJobInput,
} from './compilation-jobs.js';
export { failExpiredImports, startCompilationLeaseSweeper } from './lease-sweeper.js';
