import type { Kysely } from 'kysely';
import { DomainError } from '../../errors/index.js';
import {
  isUniqueViolation,
  type DatabaseSchema,
  type EdgePackagingJobSourcesTable,
} from '../../storage/index.js';
import { AwsError } from '../aws-errors.js';

/**
 * Points between the steps of a claim where a test runs a concurrent claim, so that a race is played in a set
 * order rather than by timing. Production passes none.
 */
export interface PackageObjectClaimHooks {
  /** After an insert was refused by a unique index, before the holder is read. */
  afterConflict?: () => Promise<void>;
  /** After this claim freed the object from a FAILED job, before it inserts again. */
  afterRelease?: () => Promise<void>;
}

/**
 * How many times a claim inserts before it gives up: each insert after the first follows a change another
 * claim made (it freed the object, or the holder vanished), so a claim only runs out when the object changes
 * hands this often while it is being created.
 */
const MAX_CLAIM_ATTEMPTS = 5;

/** The facade job, other than `jobName`, whose package object is `uri`, with its packaging job's state if any. */
async function packageHolder(
  db: Kysely<DatabaseSchema>,
  uri: string,
  jobName: string,
): Promise<{ name: string; modelVersion: string | undefined; status: string | undefined } | undefined> {
  const holder = await db
    .selectFrom('edge_packaging_job_sources')
    .leftJoin('packaging_jobs', 'packaging_jobs.name', 'edge_packaging_job_sources.job_name')
    .select(['edge_packaging_job_sources.job_name', 'packaging_jobs.model_version', 'packaging_jobs.status'])
    .where('edge_packaging_job_sources.package_object_uri', '=', uri)
    .where('edge_packaging_job_sources.job_name', '<>', jobName)
    .executeTakeFirst();
  return holder === undefined
    ? undefined
    : {
        name: holder.job_name,
        modelVersion: holder.model_version ?? undefined,
        status: holder.status ?? undefined,
      };
}

/**
 * Frees `uri` from `holder` if that job is FAILED; true if this call did. Conditional in one statement, so of
 * two takeovers at once exactly one frees it.
 */
async function releaseFailedHolder(
  db: Kysely<DatabaseSchema>,
  uri: string,
  holder: string,
): Promise<boolean> {
  const result = await db
    .updateTable('edge_packaging_job_sources')
    .set({ package_object_uri: null })
    .where('package_object_uri', '=', uri)
    .where('job_name', '=', holder)
    .where(({ exists, selectFrom }) =>
      exists(
        selectFrom('packaging_jobs')
          .select('packaging_jobs.name')
          .whereRef('packaging_jobs.name', '=', 'edge_packaging_job_sources.job_name')
          .where('packaging_jobs.status', '=', 'FAILED'),
      ),
    )
    .executeTakeFirst();
  return Number(result.numUpdatedRows) > 0;
}

/**
 * Records a new facade packaging job's source row, which takes its name and its package object (the unique
 * index on package_object_uri refuses the second of two jobs naming one object, however close). A FAILED
 * job's object is no package of it (it has no ModelArtifact), so the new job takes it over, as a retry would.
 * Of concurrent creates naming one object, one gets it; each other one is told which job has it, never that
 * its own name is taken (unless it is).
 */
export async function claimPackageObject(
  db: Kysely<DatabaseSchema>,
  source: EdgePackagingJobSourcesTable & { package_object_uri: string },
  modelVersion: string,
  hooks: PackageObjectClaimHooks = {},
): Promise<void> {
  const uri = source.package_object_uri;
  // The FAILED job whose object this claim freed: if another claim then got in first, the answer says so.
  let freedFrom: string | undefined;
  for (let attempt = 1; attempt <= MAX_CLAIM_ATTEMPTS; attempt++) {
    try {
      await db.insertInto('edge_packaging_job_sources').values(source).execute();
      return;
    } catch (error) {
      if (!isUniqueViolation(error)) throw error;
    }
    await hooks.afterConflict?.();
    const named = await db
      .selectFrom('edge_packaging_job_sources')
      .select('job_name')
      .where('job_name', '=', source.job_name)
      .executeTakeFirst();
    if (named !== undefined)
      throw new DomainError('Conflict', `edge packaging job ${source.job_name} already exists`);
    const holder = await packageHolder(db, uri, source.job_name);
    // Freed by a concurrent takeover that has not inserted yet, or its holder's create was undone: try again.
    if (holder === undefined) continue;
    if (holder.status === 'FAILED') {
      if (await releaseFailedHolder(db, uri, holder.name)) {
        freedFrom = holder.name;
        await hooks.afterRelease?.();
      }
      continue;
    }
    throw new AwsError(
      'ValidationException',
      `1 validation error detected: Value '${modelVersion}' at 'ModelVersion' failed to satisfy constraint: ` +
        `its package object ${uri} is already edge packaging job ${holder.name}'s` +
        (holder.modelVersion === undefined ? '' : `, of ModelVersion '${holder.modelVersion}'`) +
        (freedFrom === undefined
          ? ''
          : `, which was created at the same time as this job and took the object over from the FAILED job ${freedFrom} first`) +
        ` (one package object per job; a space in ModelVersion is written as _ in the object name); ` +
        `choose another ModelVersion or S3OutputLocation`,
    );
  }
  throw new DomainError(
    'ResourceInUse',
    `package object ${uri} changed hands ${MAX_CLAIM_ATTEMPTS} times while edge packaging job ` +
      `${source.job_name} was being created (other jobs naming it were created at the same time); ` +
      'nothing was created: send the request again',
  );
}
