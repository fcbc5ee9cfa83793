// The byte budget of request bodies and messages in flight, shared by the REST and gRPC doors.
export { BodyBudget, defaultBodyBudgetBytes } from './body-budget.js';
