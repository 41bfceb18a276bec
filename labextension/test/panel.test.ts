/**
 * The job detail's actions, with the REST calls stubbed: which buttons are
 * enabled, what Migrate sends, and where the server's refusal shows.
 */
import { AIGridError } from '../src/api';
import { AIGridModel } from '../src/model';
import { AIGridPanel } from '../src/panel';
import { IJob } from '../src/types';
import { ALLOWED, cluster, job, migration } from './fixtures';

// jsdom has no DragEvent, which @lumino/widgets needs: a Widget that is just a node.
jest.mock('@lumino/widgets', () => ({
  Widget: class {
    node = document.createElement('div');
    id = '';
    title = { caption: '' };
    addClass(name: string): void {
      this.node.classList.add(name);
    }
    dispose(): void {
      // Nothing to let go of.
    }
  }
}));
jest.mock('@jupyterlab/services', () => ({}));
jest.mock('@jupyterlab/coreutils', () => ({}));
jest.mock('../src/api', () => {
  class AIGridError extends Error {
    constructor(
      message: string,
      readonly field: string | null = null,
      readonly status = 0
    ) {
      super(message);
    }
  }
  return {
    AIGridError,
    cancelJob: jest.fn(),
    checkpointJob: jest.fn(),
    migrateJob: jest.fn(),
    submitJob: jest.fn(),
    followLogs: jest.fn(() => new Promise(() => undefined)),
    listJobs: jest.fn(),
    getCluster: jest.fn()
  };
});

const api = jest.requireMock('../src/api');

const NOT_LISTENING =
  'job 7 does not answer checkpoint requests: its code never calls ' +
  'jupyter_aigrid.runtime.should_checkpoint()';

const running = (overrides: Partial<IJob> = {}) =>
  job({
    checkpoint: { listening: true, copied: null, latest: null, request: null },
    placement: [{ rank: 0, node: 'node-0', local_rank: 0, gpus: [] }],
    ...overrides
  });

function panelWith(jobs: IJob[]): AIGridPanel {
  const model = new AIGridModel();
  model.jobs = jobs;
  model.cluster = cluster;
  model.refresh = jest.fn(async () => undefined);
  const panel = new AIGridPanel(model);
  panel.open('jobs', jobs[0].id);
  return panel;
}

const flush = () => new Promise(resolve => setTimeout(resolve, 0));

function button(panel: AIGridPanel, cls: string): HTMLButtonElement {
  return panel.node.querySelector(`.aigrid-detail .${cls}`) as HTMLButtonElement;
}

beforeEach(() => jest.clearAllMocks());

describe('the job detail actions', () => {
  it('enables Checkpoint and Migrate when the server allows them', () => {
    const panel = panelWith([running()]);
    expect(button(panel, 'aigrid-checkpoint-job').disabled).toBe(false);
    expect(button(panel, 'aigrid-migrate-job').disabled).toBe(false);
    const select = panel.node.querySelector('.aigrid-migrate-node') as HTMLSelectElement;
    expect([...select.options].map(o => o.textContent)).toEqual([
      'any node (policy chooses)',
      'node-0 (current)',
      'node-1'
    ]);
  });

  it("disables the ones the server refuses, its reason as their tooltip", () => {
    const refused = { allowed: false, reason: NOT_LISTENING };
    const panel = panelWith([
      running({ actions: { ...ALLOWED, checkpoint: refused, migrate: refused } })
    ]);
    const migrate = button(panel, 'aigrid-migrate-job');
    expect(migrate.disabled).toBe(true);
    expect(migrate.title).toBe(`Migrate: not now: ${NOT_LISTENING}`);
    expect(button(panel, 'aigrid-checkpoint-job').disabled).toBe(true);
    expect(button(panel, 'aigrid-checkpoint-job').title).toBe(`Checkpoint: not now: ${NOT_LISTENING}`);
    expect((panel.node.querySelector('.aigrid-migrate-node') as HTMLSelectElement).disabled).toBe(true);
    const cancel = button(panel, 'aigrid-cancel');
    expect(cancel.disabled).toBe(false);
    expect(cancel.title).toBe('');
  });

  it('follows the server, not its own reading of the job', () => {
    // A finished job the server (say, a newer one) would still let cancel: the button is on.
    const panel = panelWith([running({ state: 'succeeded' })]);
    expect(button(panel, 'aigrid-cancel').disabled).toBe(false);
    const ended = 'job 7 has already succeeded; there is nothing to cancel';
    const done = panelWith([
      running({ actions: { ...ALLOWED, cancel: { allowed: false, reason: ended } } })
    ]);
    expect(button(done, 'aigrid-cancel').disabled).toBe(true);
    expect(button(done, 'aigrid-cancel').title).toBe(`Cancel job: not now: ${ended}`);
  });

  it('migrates to the node picked, or lets the policy choose', async () => {
    const panel = panelWith([running()]);
    api.migrateJob.mockResolvedValue(running());
    button(panel, 'aigrid-migrate-job').click();
    await flush();
    expect(api.migrateJob).toHaveBeenLastCalledWith('7', undefined);

    const select = panel.node.querySelector('.aigrid-migrate-node') as HTMLSelectElement;
    select.value = 'node-1';
    select.dispatchEvent(new Event('change'));
    panel.render(); // a refresh in between keeps the choice
    expect((panel.node.querySelector('.aigrid-migrate-node') as HTMLSelectElement).value).toBe(
      'node-1'
    );
    button(panel, 'aigrid-migrate-job').click();
    await flush();
    expect(api.migrateJob).toHaveBeenLastCalledWith('7', 'node-1');
  });

  it('holds the buttons while a request is in flight', async () => {
    const panel = panelWith([running()]);
    let answer: (job: IJob) => void = () => undefined;
    api.checkpointJob.mockReturnValue(new Promise<IJob>(resolve => (answer = resolve)));
    button(panel, 'aigrid-checkpoint-job').click();
    for (const cls of ['aigrid-cancel', 'aigrid-checkpoint-job', 'aigrid-migrate-job']) {
      expect(button(panel, cls).disabled).toBe(true);
    }
    answer(running());
    await flush();
    expect(button(panel, 'aigrid-migrate-job').disabled).toBe(false);
  });

  it('shows the job the server answered with at once', async () => {
    const panel = panelWith([running()]);
    api.checkpointJob.mockResolvedValue(
      running({
        checkpoint: {
          listening: true,
          copied: null,
          latest: null,
          request: { id: 'c1', state: 'pending', requested_at: new Date().toISOString(), reason: 'r' }
        },
        actions: {
          ...ALLOWED,
          checkpoint: { allowed: false, reason: 'job 7 is already writing a checkpoint (r)' }
        }
      })
    );
    button(panel, 'aigrid-checkpoint-job').click();
    await flush();
    expect(api.checkpointJob).toHaveBeenCalledWith('7');
    expect(panel.node.querySelector('.aigrid-request-pending')).not.toBeNull();
    expect(button(panel, 'aigrid-checkpoint-job').disabled).toBe(true);
  });

  it("shows the server's refusal under the buttons, as text, and keeps it over a refresh", async () => {
    const panel = panelWith([running()]);
    const evil = '<img src=x onerror=alert(1)>';
    api.migrateJob.mockRejectedValue(new AIGridError(`no room on ${evil}`, null, 409));
    button(panel, 'aigrid-migrate-job').click();
    await flush();
    const error = panel.node.querySelector('.aigrid-action-error');
    expect(error?.textContent).toBe(`no room on ${evil}`);
    expect(panel.node.querySelector('.aigrid-detail img')).toBeNull();
    panel.render();
    expect(panel.node.querySelector('.aigrid-action-error')).not.toBeNull();
    panel.open('jobs');
    panel.open('jobs', '7');
    expect(panel.node.querySelector('.aigrid-action-error')).toBeNull();
  });

  it("shows cancel's refusal the same way", async () => {
    const panel = panelWith([running()]);
    api.cancelJob.mockRejectedValue(new AIGridError('not yours', null, 404));
    button(panel, 'aigrid-cancel').click();
    await flush();
    expect(panel.node.querySelector('.aigrid-action-error')?.textContent).toBe('not yours');
  });

  it('shows the migration timeline and the checkpoints, one job state badge', () => {
    const panel = panelWith([
      running({
        migration: migration({
          id: 2,
          state: 'stopping',
          phases: [],
          steps: [
            { phase: 'checkpointing', status: 'done', duration_s: 1, bytes: 10 },
            { phase: 'stopping', status: 'active', duration_s: null, bytes: null },
            { phase: 'transferring', status: 'pending', duration_s: null, bytes: null },
            { phase: 'restoring', status: 'pending', duration_s: null, bytes: null }
          ]
        }),
        actions: {
          ...ALLOWED,
          migrate: { allowed: false, reason: 'job 7 is migrating (stopping); wait for it to end' }
        }
      })
    ]);
    const detail = panel.node.querySelector('.aigrid-detail') as HTMLElement;
    expect(detail.querySelector('.aigrid-migration .aigrid-phase-active')?.getAttribute('data-phase')).toBe(
      'stopping'
    );
    expect(detail.querySelector('.aigrid-checkpoint')).not.toBeNull();
    expect(detail.querySelectorAll('.aigrid-state')).toHaveLength(1);
    expect(detail.querySelectorAll('.aigrid-job-name')).toHaveLength(1);
    expect(button(panel, 'aigrid-migrate-job').disabled).toBe(true);
  });
});
