export { bindDeviceCa } from './ca-binding.js';
export { CsrError, parseCsr, type ParsedCsr } from './csr.js';
export {
  DeviceCa,
  deviceUri,
  fingerprintOf,
  type DeviceCertificateRequest,
  type IssuedCertificate,
} from './device-ca.js';
export {
  deviceAuthenticator,
  enrollmentTokenAuthenticator,
  presentedCertificateOf,
  requireDevice,
} from './device-auth.js';
export {
  DeviceIdentityService,
  ENROLLMENT_TOKEN_PREFIX,
  type AuthenticatedDevice,
  type EnrollmentToken,
  type IdentityServiceOptions,
  type IssuedDeviceCertificate,
  type PresentedCertificate,
} from './identity-service.js';
export {
  issuedCertificateSchema,
  enrollmentRoutes,
  identityDeviceRoutes,
  identityOperatorRoutes,
  type IdentityRoutesOptions,
} from './routes.js';
