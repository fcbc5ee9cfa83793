import { createCipheriv, createDecipheriv, createHmac, randomBytes } from 'node:crypto';
import { LOCAL_ACTOR, type Actor, type FleetEventLog } from '../audit/index.js';
import { readFile } from 'node:fs/promises';
import { awsProfileName } from '@edgefleet/core';
import type { Kysely } from 'kysely';
import { KeyMaterialError } from '../config/key-material.js';
import { DomainError, conflict } from '../errors/index.js';
import { createOnce, fileExists } from '../identity/key-files.js';
import { claimServerSetting, isUniqueViolation, type DatabaseSchema } from '../storage/index.js';
import { tokenScopeSchema, type TokenScope } from './api-tokens.js';

/** AWS access key ids are 20 upper-case characters; ours start with AKEF so they are easy to recognise. */
const ACCESS_KEY_PREFIX = 'AKEF';
const KEY_ID_ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';

export interface AccessKeyRecord {
  accessKeyId: string;
  name: string;
  scope: TokenScope;
  /** Set for data-plane keys: the device they speak for (SageMaker Edge agents and scripts). */
  deviceName: string | null;
  createdAt: number;
  revokedAt: number | null;
  /**
   * Set (by `list`) for an unrevoked device key that no longer speaks for its device: the device was
   * deregistered (and perhaps registered again since; a key issued before that registration is refused).
   */
  endedReason?: string;
}

/** What SigV4 verification needs about an active key. */
export interface ActiveAccessKey extends AccessKeyRecord {
  secretAccessKey: string;
}

function newAccessKeyId(): string {
  const bytes = randomBytes(16);
  let id = ACCESS_KEY_PREFIX;
  for (const byte of bytes) id += KEY_ID_ALPHABET[byte % 32];
  return id;
}

/**
 * The server key that encrypts access-key secrets at rest, so a database dump alone does not reveal them.
 * Read from `file`, or created there (32 random bytes, mode 0600) on first use. Replicas must share it: those
 * starting together on a fresh shared folder create it once, as the device CA is (identity/key-files.ts).
 */
export async function loadAccessKeyEncryptionKey(file: string): Promise<Buffer> {
  await createOnce(
    `${file}.lock`,
    () => fileExists(file),
    (publish) => publish.secret(file, `${randomBytes(32).toString('base64')}\n`),
  );
  const key = Buffer.from((await readFile(file, 'utf8')).trim(), 'base64');
  if (key.length !== 32) {
    throw new KeyMaterialError(
      `${file} must hold 32 bytes, base64-encoded (it holds ${key.length}); copy the first server's ` +
        '(access-keys/encryption.key in its data dir, or its sagemaker.accessKeyEncryptionKeyFile)',
    );
  }
  return key;
}

const KEY_FINGERPRINT_SETTING = 'access_key_encryption_key_fingerprint';

/** Identifies a key without revealing it: an HMAC under the key itself, not a hash a guess could be checked against cheaply. */
export function accessKeyEncryptionKeyFingerprint(key: Buffer): string {
  return createHmac('sha256', key).update('edgefleet access-key encryption key fingerprint').digest('hex');
}

/** Thrown when the key file cannot decrypt the access keys the database holds: the server must not start (exit 2). */
export class AccessKeyEncryptionKeyMismatch extends KeyMaterialError {}

/**
 * Loads the access-key encryption key (creating it only when the database holds no access key it would
 * have to read) and ties the database to it by a fingerprint, as the device CA and the signing root are.
 * A restored database started with a new or another key file would otherwise answer every SigV4 request
 * with an error; starting is refused instead, naming the file to restore.
 */
export async function openAccessKeyEncryptionKey(
  db: Kysely<DatabaseSchema>,
  file: string,
  options: { warn?: (message: string) => void } = {},
): Promise<Buffer> {
  const stored = await db
    .selectFrom('access_keys')
    .select(['access_key_id', 'secret_ciphertext'])
    .where('revoked_at', 'is', null)
    .limit(1)
    .executeTakeFirst();
  const fix =
    'restore the key file that was backed up with this database (see "Backup and restore" in ' +
    'packages/server/README.md); every replica must use the same file: on a new replica, copy the first ' +
    "server's (access-keys/encryption.key in its data dir, 0600) and set sagemaker.accessKeyEncryptionKeyFile " +
    'to it ("Adding a replica" there)';
  if (stored !== undefined && !(await fileExists(file))) {
    throw new AccessKeyEncryptionKeyMismatch(
      `the database holds SageMaker access keys encrypted with the key in ${file} ` +
        `(sagemaker.accessKeyEncryptionKeyFile), but that file does not exist: ${fix}`,
    );
  }
  const key = await loadAccessKeyEncryptionKey(file);
  const fingerprint = accessKeyEncryptionKeyFingerprint(key);
  const mismatch = (why: string) =>
    new AccessKeyEncryptionKeyMismatch(
      `the database holds SageMaker access keys that the key in ${file} (sagemaker.accessKeyEncryptionKeyFile, ` +
        `fingerprint ${fingerprint.slice(0, 16)}) cannot decrypt (${why}): ${fix}`,
    );
  if (stored !== undefined) {
    // Databases from before the fingerprint was recorded: one active key tells whether this key reads them.
    try {
      new AccessKeyStore(db, key).decrypt(stored.secret_ciphertext, stored.access_key_id);
    } catch {
      throw mismatch(`access key ${stored.access_key_id} does not decrypt`);
    }
  }
  const bound = await claimServerSetting(db, KEY_FINGERPRINT_SETTING, fingerprint);
  if (bound !== fingerprint) {
    if (stored !== undefined)
      throw mismatch(`the database is bound to the key of fingerprint ${bound.slice(0, 16)}`);
    // No active access key to lose: this key becomes the database's key. Compare-and-swap, and only while still
    // no active key exists: a replica that started with another key file and has bound it (or created keys under
    // it) since is not overwritten.
    const rebound = await db
      .updateTable('server_settings')
      .set({ value: fingerprint })
      .where('key', '=', KEY_FINGERPRINT_SETTING)
      .where('value', '=', bound)
      .where(({ not, exists, selectFrom }) =>
        not(exists(selectFrom('access_keys').select('access_key_id').where('revoked_at', 'is', null))),
      )
      .executeTakeFirst();
    if (Number(rebound.numUpdatedRows) === 0) {
      const now = await claimServerSetting(db, KEY_FINGERPRINT_SETTING, fingerprint);
      if (now !== fingerprint)
        throw new AccessKeyEncryptionKeyMismatch(
          `another server bound the database to the access-key encryption key of fingerprint ${now.slice(0, 16)} ` +
            `while this one started with the key in ${file} (sagemaker.accessKeyEncryptionKeyFile, fingerprint ` +
            `${fingerprint.slice(0, 16)}): ${fix}`,
        );
    } else {
      options.warn?.(
        `the database's access-key encryption key changes from fingerprint ${bound.slice(0, 16)} to ` +
          `${fingerprint.slice(0, 16)} (${file}): it holds no active access key, so none is lost; a replica ` +
          'still using the other key file is refused at its next start',
      );
    }
  }
  return key;
}

/**
 * Why a device key no longer speaks for its device, or undefined while it does: the device is gone, or it was
 * registered (again) after the key was issued, so the key belongs to an earlier device of that name, whose
 * identity deregistration ended (as it revokes that device's certificates). The one rule the data plane
 * (sagemaker/routes.ts, which refuses the key) and the key listing (which shows it ended) both apply.
 */
export function keyEndedReason(
  key: { deviceName: string; createdAt: number },
  device: { registeredAt: number } | undefined,
): string | undefined {
  if (device === undefined) return `device ${key.deviceName} was deregistered`;
  if (key.createdAt < device.registeredAt)
    return `device ${key.deviceName} was deregistered and registered again after the key was issued`;
  return undefined;
}

/** AWS-style access key pairs bound to a token scope; the secret is shown once, at creation. */
export class AccessKeyStore {
  constructor(
    private readonly db: Kysely<DatabaseSchema>,
    private readonly encryptionKey: Buffer,
    private readonly now: () => number = Date.now,
    /** Where creations and revocations are logged; absent: nowhere (commands beside the server, tests). */
    private readonly events?: FleetEventLog,
  ) {
    if (encryptionKey.length !== 32) throw new Error('the access-key encryption key must be 32 bytes');
  }

  async create(
    input: {
      name: string;
      scope: TokenScope;
      deviceName?: string | undefined;
    },
    by: Actor = LOCAL_ACTOR,
  ): Promise<{ secretAccessKey: string; record: AccessKeyRecord }> {
    const secretAccessKey = randomBytes(30).toString('base64').replace(/[+/]/g, 'A');
    const record: AccessKeyRecord = {
      accessKeyId: newAccessKeyId(),
      name: input.name,
      scope: input.scope,
      deviceName: input.deviceName ?? null,
      createdAt: this.now(),
      revokedAt: null,
    };
    if (record.deviceName !== null) {
      const device = await this.db
        .selectFrom('devices')
        .select('name')
        .where('name', '=', record.deviceName)
        .executeTakeFirst();
      if (device === undefined) {
        throw new DomainError('NotFound', `device ${record.deviceName} does not exist`, {
          device: record.deviceName,
        });
      }
    }
    await this.refuseProfileNameInUse(record.name);
    try {
      await this.db
        .insertInto('access_keys')
        .values({
          access_key_id: record.accessKeyId,
          name: record.name,
          scope: record.scope,
          device_name: record.deviceName,
          secret_ciphertext: this.encrypt(secretAccessKey, record.accessKeyId),
          created_at: record.createdAt,
          revoked_at: null,
          aws_profile: awsProfileName(record.name),
        })
        .execute();
    } catch (error) {
      // Another create of this profile won the race (a unique index among unrevoked keys): it is named.
      if (!isUniqueViolation(error)) throw error;
      await this.refuseProfileNameInUse(record.name);
      throw error;
    }
    this.events?.info(by, {
      event: 'access_key_created',
      outcome: 'created',
      object: {
        accessKeyId: record.accessKeyId,
        accessKeyName: record.name,
        scope: record.scope,
        device: record.deviceName ?? undefined,
      },
      message: `access key ${record.accessKeyId} ("${record.name}", ${record.scope}${record.deviceName !== null ? `, device ${record.deviceName}` : ''}) created`,
    });
    return { secretAccessKey, record };
  }

  /** The active key with this id and its secret, or undefined if unknown or revoked. */
  async findActive(accessKeyId: string): Promise<ActiveAccessKey | undefined> {
    const row = await this.db
      .selectFrom('access_keys')
      .selectAll()
      .where('access_key_id', '=', accessKeyId)
      .where('revoked_at', 'is', null)
      .executeTakeFirst();
    if (row === undefined) return undefined;
    let secretAccessKey: string;
    try {
      secretAccessKey = this.decrypt(row.secret_ciphertext, row.access_key_id);
    } catch (error) {
      throw new Error(
        `access key ${accessKeyId} cannot be decrypted with this server's key: every replica must use the same sagemaker.accessKeyEncryptionKeyFile`,
        { cause: error },
      );
    }
    return { ...toRecord(row), secretAccessKey };
  }

  /** Keys by id; an unrevoked device key whose device was deregistered since carries `endedReason`. */
  async list(options: { after?: string; limit: number }): Promise<AccessKeyRecord[]> {
    let query = this.db
      .selectFrom('access_keys')
      .leftJoin('devices', 'devices.name', 'access_keys.device_name')
      .selectAll('access_keys')
      .select('devices.registered_at')
      .orderBy('access_key_id')
      .limit(options.limit);
    if (options.after !== undefined) query = query.where('access_key_id', '>', options.after);
    return (await query.execute()).map((row) => {
      const record = toRecord(row);
      if (record.deviceName === null || record.revokedAt !== null) return record;
      const endedReason = keyEndedReason(
        { deviceName: record.deviceName, createdAt: record.createdAt },
        row.registered_at === null ? undefined : { registeredAt: Number(row.registered_at) },
      );
      return endedReason === undefined ? record : { ...record, endedReason };
    });
  }

  /**
   * Refuses a name whose ~/.aws/credentials profile an unrevoked key already has: `token create --aws` would
   * print a second section of that name, and botocore refuses a file with two.
   */
  private async refuseProfileNameInUse(name: string): Promise<void> {
    const profile = awsProfileName(name);
    const unrevoked = await this.db
      .selectFrom('access_keys')
      .select(['access_key_id', 'name'])
      .where('revoked_at', 'is', null)
      .orderBy('access_key_id')
      .execute();
    const taken = unrevoked.find((key) => awsProfileName(key.name) === profile);
    if (taken === undefined) return;
    throw conflict(
      `access key ${taken.access_key_id} (name "${taken.name}") already has the ~/.aws/credentials profile ` +
        `[${profile}]; to rotate it, revoke that key (edgefleet token revoke ${taken.access_key_id}) and create ` +
        `the new one, or choose another name`,
      { accessKeyId: taken.access_key_id, profile },
    );
  }

  /** Revokes a key; false if there is no such (unrevoked) key. */
  async revoke(accessKeyId: string, by: Actor = LOCAL_ACTOR): Promise<boolean> {
    const result = await this.db
      .updateTable('access_keys')
      .set({ revoked_at: this.now() })
      .where('access_key_id', '=', accessKeyId)
      .where('revoked_at', 'is', null)
      .executeTakeFirst();
    const revoked = Number(result.numUpdatedRows) > 0;
    if (revoked)
      this.events?.info(by, {
        event: 'access_key_revoked',
        outcome: 'revoked',
        object: { accessKeyId },
        message: `access key ${accessKeyId} revoked`,
      });
    return revoked;
  }

  // The key id is the associated data: a ciphertext copied onto another row does not decrypt there.
  private encrypt(secret: string, accessKeyId: string): string {
    const iv = randomBytes(12);
    const cipher = createCipheriv('aes-256-gcm', this.encryptionKey, iv);
    cipher.setAAD(Buffer.from(accessKeyId, 'utf8'));
    const ciphertext = Buffer.concat([cipher.update(secret, 'utf8'), cipher.final()]);
    return Buffer.concat([iv, cipher.getAuthTag(), ciphertext]).toString('base64url');
  }

  /** Decrypts a stored secret; throws when this store's key is not the one it was encrypted with. */
  decrypt(stored: string, accessKeyId: string): string {
    const bytes = Buffer.from(stored, 'base64url');
    const decipher = createDecipheriv('aes-256-gcm', this.encryptionKey, bytes.subarray(0, 12));
    decipher.setAAD(Buffer.from(accessKeyId, 'utf8'));
    decipher.setAuthTag(bytes.subarray(12, 28));
    return Buffer.concat([decipher.update(bytes.subarray(28)), decipher.final()]).toString('utf8');
  }
}

function toRecord(row: {
  access_key_id: string;
  name: string;
  scope: string;
  device_name: string | null;
  created_at: number;
  revoked_at: number | null;
}): AccessKeyRecord {
  return {
    accessKeyId: row.access_key_id,
    name: row.name,
    scope: tokenScopeSchema.parse(row.scope),
    deviceName: row.device_name,
    createdAt: Number(row.created_at),
    revokedAt: row.revoked_at === null ? null : Number(row.revoked_at),
  };
}
