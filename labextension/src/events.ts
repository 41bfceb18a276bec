/**
 * The server's AI Grid event schemas. The sidebar refreshes on any of them
 * (by prefix, so a schema added on the server needs no change here); the ids
 * are listed for tests and for readers.
 */
export const SCHEMA_PREFIX = 'https://events.jupyter.org/jupyter_aigrid/';

export const SCHEMA_IDS = {
  jobState: `${SCHEMA_PREFIX}job_state/v1`,
  jobPlacement: `${SCHEMA_PREFIX}job_placement/v1`,
  jobMigration: `${SCHEMA_PREFIX}job_migration/v1`,
  jobCheckpoint: `${SCHEMA_PREFIX}job_checkpoint/v1`
} as const;

/** Whether an event of the server's event bus is one of ours (and so calls for a refresh). */
export function isAIGridEvent(schemaId: unknown): boolean {
  return String(schemaId ?? '').startsWith(SCHEMA_PREFIX);
}
