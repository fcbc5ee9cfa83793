/** What the server has charged a device for capture uploads: its device_capture_usage rows. */
import type { TestServer } from './server.js';

/** Capture bytes charged to `deviceName`, all days together (0 when none). */
export async function captureUsageOf(t: TestServer, deviceName: string): Promise<number> {
  const rows = await t.server.database.db
    .selectFrom('device_capture_usage')
    .select('bytes')
    .where('device_name', '=', deviceName)
    .execute();
  return rows.reduce((sum, row) => sum + Number(row.bytes), 0);
}
