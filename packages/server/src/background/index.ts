export { startPeriodicTask, type PeriodicTask } from './periodic-task.js';
