// The byte budgets of request bodies and messages in flight, and of answers waiting for their clients, each shared
// by the REST and gRPC doors.
export { BodyBudget, bodyBudgetWarning, defaultBodyBudgetBytes } from './body-budget.js';
export {
  ResponseBudget,
  defaultResponseBudgetBytes,
  responseBudgetWarning,
  slowReaderLog,
  type ResponseBudgetOptions,
  type ResponseDoor,
} from './response-budget.js';
