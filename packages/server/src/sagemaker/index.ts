export { arnBuilder, parseResourceArn, type ArnBuilder } from './arns.js';
export { AwsError, toAwsError, type AwsErrorType } from './aws-errors.js';
export { SageMakerDispatcher } from './dispatcher.js';
export type { Operation, OperationContext, OperationModule } from './operation.js';
export { compilationOperations } from './operations/compilation.js';
export { deploymentPlanOperations } from './operations/deployment-plans.js';
export { deviceOperations } from './operations/devices.js';
export { fleetOperations } from './operations/fleets.js';
export {
  exportFacadePackages,
  facadePackageS3Url,
  packageObjectUri,
  packagingOperations,
} from './operations/packaging.js';
export { tagOperations } from './operations/tags.js';
export { MAX_FACADE_BODY_BYTES, sageMakerRoutes } from './routes.js';
export { verifySigV4, SIGNING_NAME } from './sigv4.js';
