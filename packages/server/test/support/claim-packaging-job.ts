/**
 * A stand-in for a server that took a packaging job and then died: a real process that claims the next job
 * (as the packaging worker does), says so on stdout, and hangs until it is killed.
 * Arguments: <database location JSON> <blob folder> <work dir> <lease ms> [<instance id>: the server it stands for].
 */
import { createBlobStore } from '../../src/blobs/index.js';
import { ModelStore } from '../../src/models/index.js';
import { PackagingJobStore } from '../../src/packaging/index.js';
import { openDatabase, type DatabaseLocation } from '../../src/storage/index.js';

const [location, blobRoot, workDir, leaseMs, instanceId] = process.argv.slice(2);
const database = await openDatabase(JSON.parse(location ?? '') as DatabaseLocation);
const blobs = createBlobStore({ kind: 'local', root: blobRoot ?? '' });
const models = new ModelStore(database.db, { blobs, workDir: workDir ?? '', maxUploadBytes: 1 });
const claimed = await new PackagingJobStore(database.db, models, undefined, {
  ...(instanceId !== undefined && { instanceId }),
}).claimNext(Number(leaseMs));
process.stdout.write(`claimed ${claimed?.job.name ?? '(none)'}\n`);
setInterval(() => undefined, 60_000);
