import {
  canCheckpoint,
  canMigrate,
  checkpointBlocker,
  checkpointFacts,
  checkpointSummary,
  formatBytes,
  formatDuration,
  jobFacts,
  jobRow,
  migrateBlocker,
  migrationActive,
  migrationSteps,
  migrationTimeline,
  nodeSelect
} from '../src/render';
import { IJob, IJobCheckpoint, IMigration } from '../src/types';
import { cluster, job } from './fixtures';

const NOW = Date.parse('2026-01-01T00:10:00Z');
const EVIL = '<img src=x onerror=alert(1)>';

function migration(overrides: Partial<IMigration> = {}): IMigration {
  return {
    id: 1,
    kind: 'migrate',
    reason: 'requested by ada',
    state: 'transferring',
    from: ['node-0'],
    to: ['node-1'],
    checkpoint: 'ckpt-00000004.0',
    phases: [
      {
        phase: 'checkpointing',
        started_at: '2026-01-01T00:09:00Z',
        finished_at: '2026-01-01T00:09:02.500Z',
        duration_s: 2.5,
        bytes: 3 * 1024 ** 3
      },
      {
        phase: 'stopping',
        started_at: '2026-01-01T00:09:02.500Z',
        finished_at: '2026-01-01T00:09:04Z',
        duration_s: 1.5,
        bytes: null
      },
      {
        phase: 'transferring',
        started_at: '2026-01-01T00:09:30Z',
        finished_at: null,
        duration_s: null,
        bytes: null
      }
    ],
    error: null,
    started_at: '2026-01-01T00:09:00Z',
    finished_at: null,
    ...overrides
  };
}

const listening: IJobCheckpoint = { listening: true, latest: null, request: null };

function migratable(overrides: Partial<IJob> = {}): IJob {
  return job({ checkpoint: listening, placement: [], ...overrides });
}

/** No element and no handler came out of the server's strings. */
function noMarkup(node: HTMLElement): void {
  expect(node.querySelector('img, script')).toBeNull();
  for (const element of [node, ...node.querySelectorAll('*')]) {
    expect([...element.attributes].filter(a => a.name.startsWith('on'))).toEqual([]);
  }
}

describe('formatBytes', () => {
  it('reads in powers of 1024', () => {
    expect(formatBytes(0)).toBe('0 B');
    expect(formatBytes(512)).toBe('512 B');
    expect(formatBytes(1536)).toBe('1.5 KiB');
    expect(formatBytes(20 * 1024 ** 2)).toBe('20 MiB');
    expect(formatBytes(3.25 * 1024 ** 3)).toBe('3.3 GiB');
    expect(formatBytes(1024 ** 2 - 100)).toBe('1.0 MiB');
    expect(formatBytes(2 * 1024 ** 5)).toBe('2.0 PiB');
  });

  it('says "-" when the size is unknown', () => {
    expect(formatBytes(null)).toBe('-');
    expect(formatBytes(undefined)).toBe('-');
    expect(formatBytes(-1)).toBe('-');
    expect(formatBytes(NaN)).toBe('-');
  });
});

describe('formatDuration', () => {
  it('reads in seconds, minutes and hours', () => {
    expect(formatDuration(0.4)).toBe('0.4s');
    expect(formatDuration(12.7)).toBe('12s');
    expect(formatDuration(125)).toBe('2m 05s');
    expect(formatDuration(3720)).toBe('1h 02m');
    expect(formatDuration(null)).toBe('-');
  });
});

describe('canMigrate and canCheckpoint', () => {
  it('allow a running job that listens and is not migrating', () => {
    expect(canMigrate(migratable())).toBe(true);
    expect(canCheckpoint(migratable())).toBe(true);
    expect(canMigrate(migratable({ migration: migration({ state: 'done' }) }))).toBe(true);
    expect(canMigrate(migratable({ migration: migration({ state: 'failed' }) }))).toBe(true);
  });

  it('refuse a job that is not running', () => {
    for (const state of ['queued', 'starting', 'succeeded', 'failed', 'cancelled', 'preempted']) {
      expect(canMigrate(migratable({ state }))).toBe(false);
      expect(canCheckpoint(migratable({ state }))).toBe(false);
    }
    expect(migrateBlocker(migratable({ state: 'queued' }))).toBe('the job is queued');
    expect(canMigrate(migratable({ stopping: true }))).toBe(false);
  });

  it('refuse a job that does not listen, or a server without checkpoints', () => {
    expect(canMigrate(migratable({ checkpoint: { ...listening, listening: false } }))).toBe(false);
    expect(canCheckpoint(migratable({ checkpoint: { ...listening, listening: false } }))).toBe(false);
    expect(canMigrate(job())).toBe(false);
    expect(canCheckpoint(job({ checkpoint: null }))).toBe(false);
    expect(migrateBlocker(job())).toContain('should_checkpoint');
  });

  it('refuse while a migration is under way', () => {
    for (const state of ['checkpointing', 'stopping', 'transferring', 'restoring'] as const) {
      const busy = migratable({ migration: migration({ state }) });
      expect(canMigrate(busy)).toBe(false);
      expect(canCheckpoint(busy)).toBe(false);
    }
    expect(migrateBlocker(migratable({ migration: migration() }))).toBe(
      'Migration #1 is under way'
    );
  });

  it('refuse a second checkpoint while one is being written, not a migration', () => {
    const pending = migratable({
      checkpoint: {
        ...listening,
        request: { id: 'c3', state: 'pending', requested_at: '2026-01-01T00:09:00Z', reason: 'x' }
      }
    });
    expect(canCheckpoint(pending)).toBe(false);
    expect(checkpointBlocker(pending)).toBe('a checkpoint is being written');
    expect(canMigrate(pending)).toBe(true);
  });
});

describe('migrationSteps', () => {
  it('lists the phases gone through, the running one, then those to come', () => {
    const steps = migrationSteps(migration(), NOW);
    expect(steps.map(s => [s.phase, s.status])).toEqual([
      ['checkpointing', 'done'],
      ['stopping', 'done'],
      ['transferring', 'current'],
      ['restoring', 'pending']
    ]);
    expect(steps[0].duration_s).toBe(2.5);
    expect(steps[0].bytes).toBe(3 * 1024 ** 3);
    expect(steps[2].duration_s).toBe(30); // running for 30 s so far
    expect(steps[3].duration_s).toBeNull();
  });

  it('highlights the first phase before the server has recorded it', () => {
    const steps = migrationSteps(migration({ state: 'checkpointing', phases: [] }), NOW);
    expect(steps.map(s => s.status)).toEqual(['current', 'pending', 'pending', 'pending']);
  });

  it('moves on when a phase has finished and the next is not recorded yet', () => {
    const m = migration();
    m.phases[2] = { ...m.phases[2], finished_at: '2026-01-01T00:09:40Z', duration_s: 10 };
    const steps = migrationSteps({ ...m, state: 'restoring' }, NOW);
    expect(steps.map(s => s.status)).toEqual(['done', 'done', 'done', 'current']);
  });

  it('marks the failed phase and shows nothing to come', () => {
    const steps = migrationSteps(
      migration({ state: 'failed', phases: migration().phases.slice(0, 1), error: 'timeout' }),
      NOW
    );
    expect(steps.map(s => [s.phase, s.status])).toEqual([['checkpointing', 'failed']]);
  });

  it('shows a finished migration as done, durations from the timestamps if missing', () => {
    const phases = migration().phases.map(p => ({
      ...p,
      finished_at: p.finished_at ?? '2026-01-01T00:09:35Z',
      duration_s: null
    }));
    const steps = migrationSteps(migration({ state: 'done', phases }), NOW);
    expect(steps.map(s => s.status)).toEqual(['done', 'done', 'done']);
    expect(steps.map(s => s.duration_s)).toEqual([2.5, 1.5, 5]);
  });
});

describe('migrationTimeline', () => {
  it('renders each phase with duration and bytes, the current one highlighted', () => {
    const timeline = migrationTimeline(migration(), NOW);
    const phases = [...timeline.querySelectorAll<HTMLElement>('.aigrid-phase')];
    expect(phases.map(p => p.dataset.phase)).toEqual([
      'checkpointing',
      'stopping',
      'transferring',
      'restoring'
    ]);
    expect(phases[0].querySelector('.aigrid-phase-duration')?.textContent).toBe('2.5s');
    expect(phases[0].querySelector('.aigrid-phase-bytes')?.textContent).toBe('3.0 GiB');
    expect(phases[1].querySelector('.aigrid-phase-bytes')?.textContent).toBe('');
    expect(phases[2].classList).toContain('aigrid-phase-current');
    expect(phases[2].getAttribute('aria-current')).toBe('step');
    expect(phases[2].querySelector('.aigrid-phase-duration')?.textContent).toBe('30s…');
    expect(phases[3].classList).toContain('aigrid-phase-pending');
    expect(timeline.querySelectorAll('[aria-current]')).toHaveLength(1);
    expect(timeline.querySelector('.aigrid-migration-route')?.textContent).toBe('node-0 → node-1');
    expect(timeline.querySelector('.aigrid-migration-state')?.textContent).toContain('transferring');
    expect(timeline.textContent).toContain('Checkpoint ckpt-00000004.0');
    expect(timeline.textContent).toContain('requested by ada');
    expect(timeline.querySelector('.aigrid-migration-error')).toBeNull();
    // The detail's job state badge is the only .aigrid-state there (the UI test reads it).
    expect(timeline.querySelector('.aigrid-state')).toBeNull();
  });

  it('shows the error of a failed migration and how long it took', () => {
    const timeline = migrationTimeline(
      migration({
        state: 'failed',
        error: 'checkpoint timeout after 60 s',
        finished_at: '2026-01-01T00:10:00Z'
      }),
      NOW
    );
    expect(timeline.querySelector('.aigrid-migration-error')?.textContent).toBe(
      'checkpoint timeout after 60 s'
    );
    expect(timeline.querySelector('.aigrid-phase-failed')?.getAttribute('data-phase')).toBe(
      'transferring'
    );
    expect(timeline.querySelector('.aigrid-migration-time')?.textContent).toContain('took 1m 00s');
    const moved = migrationTimeline(
      migration({ state: 'done', finished_at: '2026-01-01T00:10:00Z', bytes: 5 * 1024 ** 3 }),
      NOW
    );
    expect(moved.querySelector('.aigrid-migration-time')?.textContent).toBe(
      'started 1m ago · took 1m 00s · moved 5.0 GiB'
    );
  });

  it('says the destination is not chosen yet while the policy has not chosen', () => {
    const timeline = migrationTimeline(migration({ state: 'checkpointing', to: [], phases: [] }), NOW);
    expect(timeline.querySelector('.aigrid-migration-to')?.textContent).toBe('not chosen yet');
  });

  it('shows markup in reason, nodes, error and checkpoint as text', () => {
    const timeline = migrationTimeline(
      migration({
        state: 'failed',
        reason: EVIL,
        from: [EVIL],
        to: [`${EVIL}<script>window.pwned=1</script>`],
        checkpoint: EVIL,
        error: EVIL
      }),
      NOW
    );
    noMarkup(timeline);
    expect(timeline.querySelector('.aigrid-migration-reason')?.textContent).toBe(EVIL);
    expect(timeline.querySelector('.aigrid-migration-from')?.textContent).toBe(EVIL);
    expect(timeline.querySelector('.aigrid-migration-error')?.textContent).toBe(EVIL);
    expect(timeline.textContent).toContain(`Checkpoint ${EVIL}`);
  });

  it('keeps a hostile state out of the class names', () => {
    const timeline = migrationTimeline(
      migration({ state: `x" onclick="alert(1)` as IMigration['state'] }),
      NOW
    );
    noMarkup(timeline);
    const state = timeline.querySelector('.aigrid-migration-state') as HTMLElement;
    expect(state.className).toBe('aigrid-migration-state aigrid-migration-state-x--onclick--alert-1-');
    expect(state.getAttribute('onclick')).toBeNull();
  });
});

describe('checkpoint facts', () => {
  const checkpoint: IJobCheckpoint = {
    listening: true,
    latest: { name: 'ckpt-00000004.0', step: 1200, bytes: 1536 * 1024 ** 2, at: '2026-01-01T00:07:00Z' },
    request: { id: 'c3', state: 'pending', requested_at: '2026-01-01T00:09:50Z', reason: 'requested by ada' }
  };

  it('lists listening, the latest checkpoint and the request', () => {
    expect(checkpointFacts(checkpoint, NOW)).toEqual([
      ['Listening', 'yes: checkpoint and migrate possible'],
      ['Latest', 'ckpt-00000004.0 · step 1200 · 1.5 GiB · 3m ago'],
      ['Request', 'pending (c3) · requested 10s ago · requested by ada']
    ]);
    expect(
      checkpointFacts(
        {
          listening: true,
          latest: { ...checkpoint.latest!, step: null, seconds: 4.2 },
          request: { ...checkpoint.request!, state: 'written', reason: null }
        },
        NOW
      )
    ).toEqual([
      ['Listening', 'yes: checkpoint and migrate possible'],
      ['Latest', 'ckpt-00000004.0 · 1.5 GiB · written in 4.2s · 3m ago'],
      ['Request', 'written (c3) · requested 10s ago']
    ]);
    expect(checkpointFacts({ listening: false, latest: null, request: null }, NOW)).toEqual([
      ['Listening', 'no: its ranks never called runtime.should_checkpoint()'],
      ['Latest', 'none']
    ]);
    expect(checkpointFacts(undefined)).toEqual([]);
  });

  it('marks the request state and escapes names and reasons', () => {
    const summary = checkpointSummary(
      {
        listening: true,
        latest: { ...checkpoint.latest!, name: EVIL, step: null },
        request: { ...checkpoint.request!, state: 'timeout', reason: EVIL }
      },
      NOW
    );
    noMarkup(summary);
    expect(summary.querySelector('[data-fact="latest"]')?.textContent).toBe(
      `${EVIL} · 1.5 GiB · 3m ago`
    );
    const request = summary.querySelector('.aigrid-request') as HTMLElement;
    expect(request.classList).toContain('aigrid-request-timeout');
    expect(request.textContent).toContain(EVIL);
  });
});

describe('the job list and facts', () => {
  it('badges a migrating or resuming job in its row, not a finished migration', () => {
    expect(jobRow(job({ migration: migration() })).querySelector('.aigrid-migrating')?.textContent).toBe(
      '⇄ migrating'
    );
    expect(
      jobRow(job({ migration: migration({ kind: 'resume', state: 'restoring' }) })).querySelector(
        '.aigrid-migrating'
      )?.textContent
    ).toBe('⇄ resuming');
    expect(jobRow(job({ migration: migration({ state: 'done' }) })).querySelector('.aigrid-migrating')).toBeNull();
    expect(jobRow(job({ migration: migration({ state: 'failed' }) })).querySelector('.aigrid-migrating')).toBeNull();
    expect(jobRow(job()).querySelector('.aigrid-migrating')).toBeNull();
    expect(migrationActive(null)).toBe(false);
  });

  it('sums the migration up in the facts', () => {
    expect(new Map(jobFacts(job({ migration: migration() }))).get('Migration')).toBe(
      'Migration #1 (migrate): transferring'
    );
    expect(new Map(jobFacts(job())).get('Migration')).toBe('none');
  });
});

describe('nodeSelect', () => {
  it('offers the policy first, then every node, the job’s own marked', () => {
    const select = nodeSelect(cluster, ['node-0']);
    expect([...select.options].map(o => [o.value, o.textContent])).toEqual([
      ['', 'any node (policy chooses)'],
      ['node-0', 'node-0 (current)'],
      ['node-1', 'node-1']
    ]);
    expect(select.value).toBe('');
    expect(nodeSelect(cluster, [], 'node-1').value).toBe('node-1');
    expect(nodeSelect(cluster, [], 'gone').value).toBe('');
    expect(nodeSelect(null).options).toHaveLength(1);
  });

  it('shows a hostile node name as text and sends it as it is', () => {
    const hostile = {
      ...cluster,
      nodes: [{ ...cluster.nodes[0], name: EVIL }]
    };
    const select = nodeSelect(hostile, [], EVIL);
    noMarkup(select);
    expect(select.options[1].textContent).toBe(EVIL);
    expect(select.value).toBe(EVIL);
  });
});
