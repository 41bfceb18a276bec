import { isAIGridEvent, SCHEMA_IDS } from '../src/events';

describe('isAIGridEvent', () => {
  it('takes every AI Grid schema: state, placement, migration and checkpoint', () => {
    expect(Object.values(SCHEMA_IDS)).toEqual([
      'https://events.jupyter.org/jupyter_aigrid/job_state/v1',
      'https://events.jupyter.org/jupyter_aigrid/job_placement/v1',
      'https://events.jupyter.org/jupyter_aigrid/job_migration/v1',
      'https://events.jupyter.org/jupyter_aigrid/job_checkpoint/v1'
    ]);
    for (const id of Object.values(SCHEMA_IDS)) {
      expect(isAIGridEvent(id)).toBe(true);
    }
  });

  it('ignores the other events of the server', () => {
    expect(isAIGridEvent('https://events.jupyter.org/jupyter_server/kernel_actions/v1')).toBe(false);
    expect(isAIGridEvent(undefined)).toBe(false);
  });
});
