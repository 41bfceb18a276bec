import { checkpointFacts, checkpointSummary } from '../src/checkpoint';
import { migrationActive, migrationTimeline } from '../src/migration';
import { actionBlocker, jobFacts, jobRow, nodeSelect } from '../src/render';
import { IJobCheckpoint, IMigration } from '../src/types';
import { ALLOWED, cluster, job, migration } from './fixtures';

const NOW = Date.parse('2026-01-01T00:10:00Z');
const EVIL = '<img src=x onerror=alert(1)>';

/** No element and no handler came out of the server's strings. */
function noMarkup(node: HTMLElement): void {
  expect(node.querySelector('img, script')).toBeNull();
  for (const element of [node, ...node.querySelectorAll('*')]) {
    expect([...element.attributes].filter(a => a.name.startsWith('on'))).toEqual([]);
  }
}

describe('actionBlocker', () => {
  it("takes the server's word: allowed is no blocker", () => {
    for (const action of ['cancel', 'checkpoint', 'migrate'] as const) {
      expect(actionBlocker(job({ actions: ALLOWED }), action)).toBeNull();
    }
  });

  it("gives the server's reason for a refused action, whatever the job looks like", () => {
    const reason = 'job 7 is already writing a checkpoint (requested by ada)';
    const refused = job({
      actions: { ...ALLOWED, checkpoint: { allowed: false, reason } }
    });
    expect(actionBlocker(refused, 'checkpoint')).toBe(reason);
    expect(actionBlocker(refused, 'migrate')).toBeNull();
    // Nothing of the job's own fields is judged: a queued job the server allows is allowed.
    expect(actionBlocker(job({ state: 'queued', actions: ALLOWED }), 'migrate')).toBeNull();
    expect(actionBlocker(job({ actions: { ...ALLOWED, cancel: { allowed: false, reason: null } } }), 'cancel')).toBe(
      'not allowed now'
    );
  });
});

describe('migrationTimeline', () => {
  it('draws the steps the server gave, in order, the active one highlighted', () => {
    const timeline = migrationTimeline(migration(), NOW);
    const phases = [...timeline.querySelectorAll<HTMLElement>('.aigrid-phase')];
    expect(phases.map(p => [p.dataset.phase, p.className])).toEqual([
      ['checkpointing', 'aigrid-phase aigrid-phase-done'],
      ['stopping', 'aigrid-phase aigrid-phase-done'],
      ['transferring', 'aigrid-phase aigrid-phase-active'],
      ['restoring', 'aigrid-phase aigrid-phase-pending']
    ]);
    expect(phases[0].querySelector('.aigrid-phase-duration')?.textContent).toBe('2.5 s');
    expect(phases[0].querySelector('.aigrid-phase-bytes')?.textContent).toBe('3.0 GiB');
    expect(phases[1].querySelector('.aigrid-phase-bytes')?.textContent).toBe('');
    expect(phases[2].getAttribute('aria-current')).toBe('step');
    expect(phases[2].querySelector('.aigrid-phase-duration')?.textContent).toBe('30 s…');
    expect(phases[3].querySelector('.aigrid-phase-duration')?.textContent).toBe('');
    expect(timeline.querySelectorAll('[aria-current]')).toHaveLength(1);
    expect(timeline.querySelector('.aigrid-migration-route')?.textContent).toBe('node-0 → node-1');
    expect(timeline.querySelector('.aigrid-migration-state')?.textContent).toContain('transferring');
    expect(timeline.textContent).toContain('Checkpoint ckpt-00000004.0');
    expect(timeline.textContent).toContain('requested by ada');
    expect(timeline.querySelector('.aigrid-migration-error')).toBeNull();
    // The detail's job state badge is the only .aigrid-state there (the UI test reads it).
    expect(timeline.querySelector('.aigrid-state')).toBeNull();
  });

  it('derives nothing from the phases: only the steps are drawn', () => {
    // A resume: the server marks the phases it does not run as skipped.
    const resume = migration({
      kind: 'resume',
      state: 'restoring',
      steps: [
        { phase: 'checkpointing', status: 'skipped', duration_s: null, bytes: null },
        { phase: 'stopping', status: 'skipped', duration_s: null, bytes: null },
        { phase: 'transferring', status: 'done', duration_s: 4, bytes: 1024 },
        { phase: 'restoring', status: 'active', duration_s: 1.2, bytes: null }
      ]
    });
    const timeline = migrationTimeline(resume, NOW);
    const phases = [...timeline.querySelectorAll<HTMLElement>('.aigrid-phase')];
    expect(phases.map(p => p.className.split('aigrid-phase-')[1])).toEqual([
      'skipped',
      'skipped',
      'done',
      'active'
    ]);
    expect(phases[2].querySelector('.aigrid-phase-bytes')?.textContent).toBe('1.0 KiB');
    expect(phases[3].querySelector('.aigrid-phase-duration')?.textContent).toBe('1.2 s…');
    expect(migrationTimeline(migration({ steps: [] }), NOW).querySelectorAll('.aigrid-phase')).toHaveLength(0);
  });

  it('shows the error of a failed migration and how long it took', () => {
    const timeline = migrationTimeline(
      migration({
        state: 'failed',
        error: 'checkpoint timeout after 60 s',
        finished_at: '2026-01-01T00:10:00Z',
        duration_s: 60,
        steps: [
          { phase: 'checkpointing', status: 'done', duration_s: 2.5, bytes: 3 * 1024 ** 3 },
          { phase: 'stopping', status: 'done', duration_s: 1.5, bytes: null },
          { phase: 'transferring', status: 'failed', duration_s: 30, bytes: null },
          { phase: 'restoring', status: 'skipped', duration_s: null, bytes: null }
        ]
      }),
      NOW
    );
    expect(timeline.querySelector('.aigrid-migration-error')?.textContent).toBe(
      'checkpoint timeout after 60 s'
    );
    expect(timeline.querySelector('.aigrid-phase-failed')?.getAttribute('data-phase')).toBe(
      'transferring'
    );
    expect(timeline.querySelector('[aria-current]')).toBeNull();
    expect(timeline.querySelector('.aigrid-migration-time')?.textContent).toContain('took 1 m');
    const moved = migrationTimeline(
      migration({
        state: 'done',
        finished_at: '2026-01-01T00:10:00Z',
        duration_s: 60,
        bytes: 5 * 1024 ** 3
      }),
      NOW
    );
    expect(moved.querySelector('.aigrid-migration-time')?.textContent).toBe(
      'started 1 m ago · took 1 m · moved 5.0 GiB'
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

  it('keeps a hostile state or step status out of the class names', () => {
    const timeline = migrationTimeline(
      migration({
        state: `x" onclick="alert(1)` as IMigration['state'],
        steps: [
          {
            phase: 'checkpointing',
            status: `y" onclick="alert(1)` as 'done',
            duration_s: null,
            bytes: null
          }
        ]
      }),
      NOW
    );
    noMarkup(timeline);
    const state = timeline.querySelector('.aigrid-migration-state') as HTMLElement;
    expect(state.className).toBe('aigrid-migration-state aigrid-migration-state-x--onclick--alert-1-');
    expect(state.getAttribute('onclick')).toBeNull();
    expect(timeline.querySelector('.aigrid-phase')?.className).toBe(
      'aigrid-phase aigrid-phase-y--onclick--alert-1-'
    );
  });
});

describe('checkpoint facts', () => {
  const checkpoint: IJobCheckpoint = {
    listening: true,
    copied: null,
    latest: {
      name: 'ckpt-00000004.0',
      step: 1200,
      bytes: 1536 * 1024 ** 2,
      seconds: null,
      at: '2026-01-01T00:07:00Z'
    },
    request: { id: 'c3', state: 'pending', requested_at: '2026-01-01T00:09:50Z', reason: 'requested by ada' }
  };

  it('lists listening, the latest checkpoint and the request', () => {
    expect(checkpointFacts(checkpoint, NOW)).toEqual([
      ['Listening', 'yes: its ranks answer checkpoint requests'],
      ['Latest', 'ckpt-00000004.0 · step 1200 · 1.5 GiB · 3 m ago'],
      ['Request', 'pending (c3) · requested 10 s ago · requested by ada']
    ]);
    expect(
      checkpointFacts(
        {
          ...checkpoint,
          latest: { ...checkpoint.latest!, step: null, seconds: 4.2 },
          request: { ...checkpoint.request!, state: 'written', reason: null }
        },
        NOW
      )
    ).toEqual([
      ['Listening', 'yes: its ranks answer checkpoint requests'],
      ['Latest', 'ckpt-00000004.0 · 1.5 GiB · written in 4.2 s · 3 m ago'],
      ['Request', 'written (c3) · requested 10 s ago']
    ]);
    expect(checkpointFacts({ listening: false, copied: null, latest: null, request: null }, NOW)).toEqual([
      ['Listening', 'no: its ranks never called runtime.should_checkpoint()'],
      ['Latest', 'none']
    ]);
    expect(checkpointFacts(undefined)).toEqual([]);
  });

  it('marks the request state and escapes names and reasons', () => {
    const summary = checkpointSummary(
      {
        ...checkpoint,
        latest: { ...checkpoint.latest!, name: EVIL, step: null },
        request: { ...checkpoint.request!, state: 'timeout', reason: EVIL }
      },
      NOW
    );
    noMarkup(summary);
    expect(summary.querySelector('[data-fact="latest"]')?.textContent).toBe(
      `${EVIL} · 1.5 GiB · 3 m ago`
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
