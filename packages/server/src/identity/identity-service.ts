import type { Kysely } from 'kysely';
import { LOCAL_ACTOR, type Actor, type FleetEventLog } from '../audit/index.js';
import { hashSecret, newId, newSecret } from '../auth/index.js';
import { deviceFleet, lockDevice, toCertificate, type DeviceCertificateRecord } from '../devices/index.js';
import { DomainError, notFound } from '../errors/index.js';
import { LineLimiter } from '../logging/line-limiter.js';
import type { DatabaseEngine, DatabaseSchema } from '../storage/index.js';
import { CsrError, parseCsr } from './csr.js';
import type { DeviceCa, IssuedCertificate } from './device-ca.js';

export const ENROLLMENT_TOKEN_PREFIX = 'efe_';

/** Who is at the other end of a device-API connection, once its certificate checked out. */
export interface AuthenticatedDevice {
  deviceName: string;
  fleetName: string;
  /** What it proved who it is with, as messages name it; absent: its client certificate. */
  credential?: string;
  serial: string;
  notAfter: number;
}

interface CertificateRow {
  fingerprint_sha256: string;
  serial: string;
  device_name: string;
  not_after: number;
  revoked_at: number | null;
  fleet_name: string;
}

export interface EnrollmentToken {
  token: string;
  deviceName: string;
  fleetName: string;
  expiresAt: number;
}

export interface IssuedDeviceCertificate extends IssuedCertificate {
  deviceName: string;
  fleetName: string;
  caCertificatePem: string;
}

export interface IdentityServiceOptions {
  /** The database's engine (ServerDatabase.engine): how a renewal holds its device's row. */
  databaseEngine: DatabaseEngine;
  ca: DeviceCa;
  certificateValidityDays: number;
  enrollmentTokenTtlSeconds: number;
  maxEnrollmentTokenTtlSeconds: number;
  /** Where enrollments, renewals, revocations and revoked certificates presented are logged; absent: nowhere. */
  events?: FleetEventLog;
  now?: () => number;
}

/** A revoked certificate presented again is logged at most this often per certificate (a device retries). */
const REVOKED_USE_LOG_INTERVAL_MS = 60 * 60 * 1000;
/** Certificates whose last such line is remembered; past this, the oldest are forgotten (bounded memory). */
const MAX_REVOKED_USES_REMEMBERED = 1000;

/** What a client certificate presented on the device API looks like to us. */
export interface PresentedCertificate {
  /** From the TLS layer: chained to the device CA and within its validity. */
  authorized: boolean;
  /** The TLS layer's reason when not authorized (e.g. CERT_HAS_EXPIRED), absent when no certificate came. */
  authorizationError?: string;
  /** SHA-256 of the DER, lowercase hex; absent when the client sent no certificate. */
  fingerprintSha256?: string;
}

/**
 * Who the enrolling host takes itself for; a live token issued for another device is refused and left unspent.
 * `thingName`: a Greengrass core's IoT thing name, matched against the device's registered IoT thing name, or
 * its name when it has none.
 */
export interface EnrollingHost {
  deviceName?: string;
  thingName?: string;
}

function tokenUsed(): DomainError {
  return new DomainError('EnrollmentTokenUsed', 'the enrollment token was already used; ask for a new one');
}

function badCsr(error: unknown): never {
  if (error instanceof CsrError)
    throw new DomainError('ValidationError', error.message, { in: 'body', field: 'csr' });
  throw error;
}

/**
 * Device identities: single-use enrollment tokens, certificates issued from CSRs, renewal, revocation, and
 * the check of every device-API request's client certificate. All state is in the database, so any replica
 * can enroll, renew or authenticate any device.
 */
export class DeviceIdentityService {
  private readonly now: () => number;
  // Certificate lookups asked for in the same turn of the event loop go to the database as one query.
  private pendingLookups = new Map<
    string,
    { resolve: (row: CertificateRow | undefined) => void; reject: (e: unknown) => void }[]
  >();
  private lookupScheduled = false;
  // Revoked certificates presented, by serial: a device retries every few seconds.
  private readonly revokedUseLines: LineLimiter;
  // Lines a client can repeat at will (a garbage enrollment token; renewals by one device): one a minute per key.
  private readonly repeatableLines: LineLimiter;

  constructor(
    private readonly db: Kysely<DatabaseSchema>,
    private readonly options: IdentityServiceOptions,
  ) {
    this.now = options.now ?? Date.now;
    this.revokedUseLines = new LineLimiter({
      now: this.now,
      intervalMs: REVOKED_USE_LOG_INTERVAL_MS,
      maxKeys: MAX_REVOKED_USES_REMEMBERED,
    });
    this.repeatableLines = new LineLimiter({ now: this.now });
  }

  get caCertificatePem(): string {
    return this.options.ca.certificatePem;
  }

  /** A single-use token with which the device may enroll once, before it expires. */
  async createEnrollmentToken(
    deviceName: string,
    ttlSeconds?: number,
    by: Actor = LOCAL_ACTOR,
  ): Promise<EnrollmentToken> {
    const ttl = ttlSeconds ?? this.options.enrollmentTokenTtlSeconds;
    if (ttl > this.options.maxEnrollmentTokenTtlSeconds) {
      throw new DomainError(
        'ValidationError',
        `ttlSeconds ${ttl} is above the configured maximum of ${this.options.maxEnrollmentTokenTtlSeconds}`,
        { in: 'body', field: 'ttlSeconds' },
      );
    }
    const device = await deviceFleet(this.db, deviceName);
    if (device === undefined) throw notFound(`device ${deviceName}`, { device: deviceName });
    const token = newSecret(ENROLLMENT_TOKEN_PREFIX);
    const createdAt = this.now();
    const expiresAt = createdAt + ttl * 1000;
    await this.db
      .insertInto('enrollment_tokens')
      .values({
        id: newId(),
        device_name: deviceName,
        token_hash: hashSecret(token),
        created_at: createdAt,
        expires_at: expiresAt,
        used_at: null,
      })
      .execute();
    this.options.events?.info(by, {
      event: 'enrollment_token_created',
      outcome: 'created',
      object: { device: deviceName, fleet: device.fleetName, expiresAt: new Date(expiresAt).toISOString() },
      message: `enrollment token created for device ${deviceName}`,
    });
    return { token, deviceName, fleetName: device.fleetName, expiresAt };
  }

  /**
   * Exchanges an enrollment token and a CSR for a device certificate. The CSR is checked first so a bad one
   * does not burn the token; the token is consumed and the certificate recorded in one transaction.
   */
  async enroll(
    token: string,
    csrPem: string,
    expected: EnrollingHost = {},
  ): Promise<IssuedDeviceCertificate> {
    let publicKeyPem: string;
    try {
      ({ publicKeyPem } = parseCsr(csrPem));
    } catch (error) {
      badCsr(error);
    }
    const at = this.now();
    const tokenHash = hashSecret(token);
    let issued: IssuedDeviceCertificate;
    try {
      issued = await this.consumeAndIssue(tokenHash, publicKeyPem, at, expected);
    } catch (error) {
      // Said without the token: its code (used, expired, unknown) is what an operator needs. Anyone can send an
      // unknown one (only its prefix is checked before): those are logged once a minute, with a count.
      const unknownToken = error instanceof DomainError && error.code === 'EnrollmentTokenInvalid';
      const admitted = unknownToken ? this.repeatableLines.admit('unknown-enrollment-token') : { leftOut: 0 };
      if (error instanceof DomainError && admitted !== undefined)
        this.options.events?.info(
          { kind: 'enrollment-token' },
          {
            event: 'device_enrollment_refused',
            outcome: 'refused',
            object: {
              reason: error.code,
              ...(admitted.leftOut > 0 && { refusalsNotLogged: admitted.leftOut }),
            },
            message: `enrollment refused: ${error.message}${unknownToken ? ` (unknown tokens logged at most once a minute${admitted.leftOut > 0 ? `; ${admitted.leftOut} more since the last line` : ''})` : ''}`,
          },
        );
      throw error;
    }
    this.options.events?.info(
      { kind: 'enrollment-token', device: issued.deviceName },
      {
        event: 'device_enrolled',
        outcome: 'enrolled',
        object: { device: issued.deviceName, fleet: issued.fleetName, serial: issued.serial },
        message: `device ${issued.deviceName} of fleet ${issued.fleetName} enrolled; certificate ${issued.serial} issued`,
      },
    );
    return issued;
  }

  /** The enrollment's transaction: the token consumed and the certificate recorded together. */
  private async consumeAndIssue(
    tokenHash: string,
    publicKeyPem: string,
    at: number,
    expected: EnrollingHost,
  ): Promise<IssuedDeviceCertificate> {
    return this.db.transaction().execute(async (trx) => {
      const row = await trx
        .selectFrom('enrollment_tokens')
        .select(['used_at', 'expires_at', 'device_name'])
        .where('token_hash', '=', tokenHash)
        .executeTakeFirst();
      if (row === undefined) {
        throw new DomainError(
          'EnrollmentTokenInvalid',
          'the enrollment token is unknown (or its device was deregistered)',
        );
      }
      // Spent or expired first: such a token is of no use to anyone, whichever device it was for.
      if (row.used_at !== null) throw tokenUsed();
      if (row.expires_at <= at) {
        throw new DomainError(
          'EnrollmentTokenExpired',
          'the enrollment token has expired; ask for a new one',
          {
            expiredAt: new Date(row.expires_at).toISOString(),
          },
        );
      }
      // With the device the enrolling host takes itself for (a Greengrass core's thing name), a token issued for
      // another device is refused and left unspent, so that host never takes that device's identity.
      if (expected.deviceName !== undefined && row.device_name !== expected.deviceName) {
        throw new DomainError(
          'Forbidden',
          `the enrollment token was issued for device ${row.device_name}, not ${expected.deviceName}; expected a token for ${expected.deviceName} (the token is left unused)`,
          { device: expected.deviceName, tokenDevice: row.device_name },
        );
      }
      if (expected.thingName !== undefined) {
        // Edge Manager let a device's IoT thing name differ from its name: the registered one is the thing's.
        const device = await trx
          .selectFrom('devices')
          .select(['name', 'iot_thing_name'])
          .where('name', '=', row.device_name)
          .executeTakeFirst();
        const thingOfDevice = device?.iot_thing_name ?? row.device_name;
        if (thingOfDevice !== expected.thingName) {
          throw new DomainError(
            'Forbidden',
            `the enrollment token was issued for device ${row.device_name}, whose IoT thing name is ${thingOfDevice}${device?.iot_thing_name == null ? ' (none is registered: its device name stands for it)' : ''}, not ${expected.thingName}; expected a token for the device registered with IoT thing name ${expected.thingName} (or named so) (the token is left unused)`,
            { thingName: expected.thingName, tokenDevice: row.device_name },
          );
        }
      }
      const consumed = await trx
        .updateTable('enrollment_tokens')
        .set({ used_at: at })
        .where('token_hash', '=', tokenHash)
        .where('used_at', 'is', null)
        .where('expires_at', '>', at)
        .returning(['device_name'])
        .executeTakeFirst();
      // Spent by a concurrent enrollment between the read and this update.
      if (consumed === undefined) throw tokenUsed();
      const device = await deviceFleet(trx, consumed.device_name);
      if (device === undefined)
        throw notFound(`device ${consumed.device_name}`, { device: consumed.device_name });
      const issued = this.options.ca.issueDeviceCertificate({
        deviceName: device.name,
        fleetName: device.fleetName,
        publicKeyPem,
        validityDays: this.options.certificateValidityDays,
      });
      await this.record(trx, device.name, device.fleetName, issued, at);
      return {
        ...issued,
        deviceName: device.name,
        fleetName: device.fleetName,
        caCertificatePem: this.caCertificatePem,
      };
    });
  }

  /**
   * A fresh certificate for an authenticated device (before its current one expires). Every other active
   * certificate of the device is revoked as superseded: the one presented keeps working until it expires (the
   * agent switches over without dropping a call), so a device never holds more than two, and a stolen
   * certificate cannot mint an unbounded set of valid ones.
   */
  async renew(device: AuthenticatedDevice, csrPem: string): Promise<IssuedDeviceCertificate> {
    let publicKeyPem: string;
    try {
      ({ publicKeyPem } = parseCsr(csrPem));
    } catch (error) {
      badCsr(error);
    }
    const issued = this.options.ca.issueDeviceCertificate({
      deviceName: device.deviceName,
      fleetName: device.fleetName,
      publicKeyPem,
      validityDays: this.options.certificateValidityDays,
    });
    const at = this.now();
    await this.db.transaction().execute(async (trx) => {
      // Renewals of one device run one at a time: each then revokes the certificate the one before issued
      // (else renewals sent at once would each keep their own, and a stolen certificate could mint many).
      if (!(await lockDevice(trx, this.options.databaseEngine, device.deviceName)))
        throw notFound(`device ${device.deviceName}`, { device: device.deviceName });
      await trx
        .updateTable('device_certificates')
        .set({ revoked_at: at, revocation_reason: 'superseded by a renewal' })
        .where('device_name', '=', device.deviceName)
        .where('serial', '!=', device.serial)
        .where('revoked_at', 'is', null)
        .execute();
      await this.record(trx, device.deviceName, device.fleetName, issued, at);
    });
    // A device may renew in a loop (no rate limit on renewals): one line a minute per device, with a count.
    const admitted = this.repeatableLines.admit(`renewed:${device.deviceName}`);
    if (admitted !== undefined)
      this.options.events?.info(
        { kind: 'device', device: device.deviceName },
        {
          event: 'certificate_renewed',
          outcome: 'issued',
          object: {
            device: device.deviceName,
            fleet: device.fleetName,
            serial: issued.serial,
            ...(admitted.leftOut > 0 && { renewalsNotLogged: admitted.leftOut }),
          },
          message: `device ${device.deviceName} renewed its certificate: ${issued.serial} issued, its others revoked as superseded (logged at most once a minute per device${admitted.leftOut > 0 ? `; ${admitted.leftOut} more renewals since the last line` : ''})`,
        },
      );
    return {
      ...issued,
      deviceName: device.deviceName,
      fleetName: device.fleetName,
      caCertificatePem: this.caCertificatePem,
    };
  }

  /** Issues and records a certificate directly (tests, and operators bringing their own key). */
  async issue(
    deviceName: string,
    publicKeyPem: string,
    window: { notBefore?: Date; notAfter?: Date } = {},
  ): Promise<IssuedDeviceCertificate> {
    const device = await deviceFleet(this.db, deviceName);
    if (device === undefined) throw notFound(`device ${deviceName}`, { device: deviceName });
    const issued = this.options.ca.issueDeviceCertificate({
      deviceName,
      fleetName: device.fleetName,
      publicKeyPem,
      validityDays: this.options.certificateValidityDays,
      ...window,
    });
    await this.record(this.db, deviceName, device.fleetName, issued, this.now());
    return { ...issued, deviceName, fleetName: device.fleetName, caCertificatePem: this.caCertificatePem };
  }

  private async record(
    db: Kysely<DatabaseSchema>,
    deviceName: string,
    fleetName: string,
    issued: IssuedCertificate,
    at: number,
  ): Promise<void> {
    await db
      .insertInto('device_certificates')
      .values({
        serial: issued.serial,
        device_name: deviceName,
        fleet_name: fleetName,
        fingerprint_sha256: issued.fingerprintSha256,
        subject: issued.subject,
        not_before: issued.notBefore,
        not_after: issued.notAfter,
        issued_at: at,
        revoked_at: null,
        revocation_reason: null,
      })
      .execute();
  }

  /** Revokes one certificate (by serial) or every active one of the device; returns how many. */
  async revoke(
    deviceName: string,
    options: { serial?: string; reason?: string } = {},
    by: Actor = LOCAL_ACTOR,
  ): Promise<number> {
    const device = await deviceFleet(this.db, deviceName);
    if (device === undefined) throw notFound(`device ${deviceName}`, { device: deviceName });
    let query = this.db
      .updateTable('device_certificates')
      .set({ revoked_at: this.now(), revocation_reason: options.reason ?? 'revoked by operator' })
      .where('device_name', '=', deviceName)
      .where('revoked_at', 'is', null);
    if (options.serial !== undefined) query = query.where('serial', '=', options.serial.toLowerCase());
    const result = await query.executeTakeFirst();
    const count = Number(result.numUpdatedRows);
    if (options.serial !== undefined && count === 0) {
      throw notFound(`active certificate ${options.serial} of device ${deviceName}`);
    }
    this.options.events?.info(by, {
      event: 'certificate_revoked',
      outcome: count > 0 ? 'revoked' : 'none-active',
      object: { device: deviceName, fleet: device.fleetName, serial: options.serial, count },
      message: `${count} certificate(s) of device ${deviceName} revoked${options.serial !== undefined ? ` (${options.serial})` : ''}: ${options.reason ?? 'revoked by operator'}`,
    });
    return count;
  }

  /**
   * A revoked certificate presented: someone holds a key the operator took away (a stolen device, or one
   * deregistered and still running). A warning, once an hour per certificate, as the device retries.
   */
  private logRevokedUse(row: CertificateRow): void {
    if (this.revokedUseLines.admit(row.serial) === undefined) return;
    this.options.events?.warn(
      { kind: 'device', device: row.device_name },
      {
        event: 'revoked_certificate_used',
        outcome: 'refused',
        object: { device: row.device_name, fleet: row.fleet_name, serial: row.serial },
        message: `a revoked certificate (${row.serial}) of device ${row.device_name} was presented and refused (logged once an hour per certificate)`,
      },
    );
  }

  async certificates(deviceName: string): Promise<DeviceCertificateRecord[]> {
    const rows = await this.db
      .selectFrom('device_certificates')
      .selectAll()
      .where('device_name', '=', deviceName)
      .orderBy('issued_at', 'desc')
      .orderBy('serial')
      .execute();
    // A deregistered device's certificates stay (revoked) for the record; a name never registered is 404, as on
    // every other device route, not an empty list that reads as "registered, never enrolled".
    if (rows.length === 0 && (await deviceFleet(this.db, deviceName)) === undefined)
      throw notFound(`device ${deviceName}`, { device: deviceName });
    return rows.map(toCertificate);
  }

  private lookupCertificate(fingerprintSha256: string): Promise<CertificateRow | undefined> {
    return new Promise((resolve, reject) => {
      const waiting = this.pendingLookups.get(fingerprintSha256) ?? [];
      waiting.push({ resolve, reject });
      this.pendingLookups.set(fingerprintSha256, waiting);
      if (!this.lookupScheduled) {
        this.lookupScheduled = true;
        setImmediate(() => void this.flushLookups());
      }
    });
  }

  private async flushLookups(): Promise<void> {
    const pending = this.pendingLookups;
    this.pendingLookups = new Map();
    this.lookupScheduled = false;
    const fingerprints = [...pending.keys()];
    try {
      const found = new Map<string, CertificateRow>();
      for (let i = 0; i < fingerprints.length; i += 500) {
        const rows = await this.db
          .selectFrom('device_certificates')
          .innerJoin('devices', 'devices.name', 'device_certificates.device_name')
          .select([
            'device_certificates.fingerprint_sha256',
            'device_certificates.serial',
            'device_certificates.device_name',
            'device_certificates.not_after',
            'device_certificates.revoked_at',
            'devices.fleet_name',
          ])
          .where('device_certificates.fingerprint_sha256', 'in', fingerprints.slice(i, i + 500))
          .execute();
        for (const row of rows) found.set(row.fingerprint_sha256, row);
      }
      for (const [fingerprint, waiting] of pending) {
        for (const waiter of waiting) waiter.resolve(found.get(fingerprint));
      }
    } catch (error) {
      for (const waiting of pending.values()) for (const waiter of waiting) waiter.reject(error);
    }
  }

  /**
   * Decides whether a device-API request may proceed, from the certificate its TLS connection presented:
   * chained to our CA, issued by us (recorded), not revoked, not expired, and its device still registered.
   */
  async authenticate(presented: PresentedCertificate): Promise<AuthenticatedDevice> {
    if (presented.fingerprintSha256 === undefined) {
      throw new DomainError(
        'CertificateRequired',
        'device routes need a client certificate issued at enrollment (mutual TLS)',
      );
    }
    if (!presented.authorized) {
      if (presented.authorizationError === 'CERT_HAS_EXPIRED') {
        throw new DomainError(
          'CertificateExpired',
          'the client certificate has expired; enroll again with a new token',
        );
      }
      throw new DomainError(
        'CertificateInvalid',
        "the client certificate was not issued by this server's device CA",
        {
          tlsError: presented.authorizationError ?? 'unknown',
        },
      );
    }
    const row = await this.lookupCertificate(presented.fingerprintSha256);
    if (row === undefined) {
      throw new DomainError(
        'CertificateRevoked',
        'the client certificate is not (or no longer) valid for any registered device',
      );
    }
    if (row.revoked_at !== null) {
      this.logRevokedUse(row);
      throw new DomainError('CertificateRevoked', 'the client certificate has been revoked');
    }
    if (row.not_after <= this.now()) {
      throw new DomainError(
        'CertificateExpired',
        'the client certificate has expired; enroll again with a new token',
      );
    }
    return {
      deviceName: row.device_name,
      fleetName: row.fleet_name,
      serial: row.serial,
      notAfter: row.not_after,
    };
  }
}
