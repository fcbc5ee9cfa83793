// Domain errors: what capabilities throw; http/ (and later the SageMaker facade) translate them.
export { conflict, DomainError, invalid, notFound, type DomainErrorCode } from './domain-error.js';
export {
  dependencyUnavailableOf,
  diskFaultComponentOf,
  type StateComponent,
} from './dependency-unavailable.js';
