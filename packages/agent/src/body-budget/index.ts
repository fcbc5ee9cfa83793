// The byte budget of request bodies and messages in flight, shared by the REST and gRPC doors.
export { BodyBudget, bodyBudgetWarning, defaultBodyBudgetBytes } from './body-budget.js';
