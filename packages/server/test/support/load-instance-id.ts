/**
 * A server start reduced to its instance id: loads (or makes) the id of the data dir given and prints it.
 * Arguments: <data dir>.
 */
import { loadInstanceId } from '../../src/server/instance-id.js';

process.stdout.write(`${await loadInstanceId(process.argv[2] ?? '')}\n`);
