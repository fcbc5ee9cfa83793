export {
  CompilationJobStore,
  type CompilationJobRecord,
  type CompilationJobStatus,
  type CompilationJobsOptions,
  type CreateCompilationJobInput,
} from './compilation-jobs.js';
