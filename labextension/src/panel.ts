/**
 * The "AI Grid" sidebar: jobs (list, detail with placement, migration
 * timeline, checkpoints and a following log tail; cancel, checkpoint and
 * migrate), the cluster map, and a submit form.
 */
import { Widget } from '@lumino/widgets';

import {
  AIGridError,
  cancelJob,
  checkpointJob,
  followLogs,
  migrateJob,
  submitJob
} from './api';
import { checkpointFacts, checkpointSummary } from './checkpoint';
import { clusterMap } from './cluster';
import { el } from './dom';
import { migrationTimeline } from './migration';
import { AIGridModel } from './model';
import {
  actionBlocker,
  jobFacts,
  jobRow,
  nodeSelect,
  placementTable,
  splitCommand,
  stateBadge
} from './render';
import { IJob, JOB_STATES } from './types';

type Tab = 'jobs' | 'cluster' | 'submit';

export class AIGridPanel extends Widget {
  constructor(readonly model: AIGridModel) {
    super();
    this.id = 'jupyter-aigrid-panel';
    this.addClass('aigrid-panel');
    this.title.caption = 'AI Grid: jobs and GPUs';
    this.node.append(this._tabs(), this._body);
    this._buildForm();
    model.changed.connect(this.render, this);
    this.render();
  }

  dispose(): void {
    this._stopLogs();
    super.dispose();
  }

  private _tabs(): HTMLElement {
    const bar = el('div', { class: 'aigrid-tabs', role: 'tablist' });
    for (const [tab, label] of [
      ['jobs', 'Jobs'],
      ['cluster', 'Cluster'],
      ['submit', 'Submit']
    ] as const) {
      const button = el('button', { class: 'aigrid-tab', 'data-tab': tab, role: 'tab' }, label);
      button.addEventListener('click', () => this.open(tab));
      bar.append(button);
    }
    return bar;
  }

  open(tab: Tab, jobId: string | null = null): void {
    this._tab = tab;
    if (jobId !== this._selected) {
      this._stopLogs();
      this._actionError = null;
      this._migrateTo = '';
    }
    this._selected = jobId;
    this.render();
  }

  render(): void {
    for (const button of this.node.querySelectorAll<HTMLElement>('.aigrid-tab')) {
      button.classList.toggle('aigrid-tab-active', button.dataset.tab === this._tab);
    }
    const error = this.model.error ? el('p', { class: 'aigrid-error' }, this.model.error) : null;
    let content: HTMLElement;
    if (this._tab === 'cluster') {
      content = this.model.cluster ? clusterMap(this.model.cluster) : el('p', {}, 'Loading…');
    } else if (this._tab === 'submit') {
      content = this._form;
    } else if (this._selected !== null) {
      content = this._detail(this._selected);
    } else {
      content = this._list();
    }
    this._body.replaceChildren(...[error, content].filter((n): n is HTMLElement => n !== null));
  }

  private _list(): HTMLElement {
    const filter = el('select', { class: 'aigrid-filter', 'aria-label': 'Filter by state' });
    for (const state of ['all', ...JOB_STATES]) {
      const option = el('option', { value: state }, state) as HTMLOptionElement;
      option.selected = state === this._filter;
      filter.append(option);
    }
    filter.addEventListener('change', () => {
      this._filter = (filter as HTMLSelectElement).value;
      this.render();
    });
    const jobs = this.model.jobs.filter(j => this._filter === 'all' || j.state === this._filter);
    const list = el('ul', { class: 'aigrid-jobs' });
    for (const job of jobs) {
      const row = jobRow(job);
      row.addEventListener('click', () => this.open('jobs', job.id));
      list.append(row);
    }
    return el(
      'div',
      {},
      el('label', { class: 'aigrid-filter-label' }, 'State ', filter),
      jobs.length ? list : el('p', { class: 'aigrid-muted' }, 'No jobs.')
    );
  }

  private _detail(id: string): HTMLElement {
    const job = this.model.jobs.find(j => j.id === id);
    const back = el('button', { class: 'aigrid-back' }, '← All jobs');
    back.addEventListener('click', () => this.open('jobs'));
    if (!job) {
      return el('div', {}, back, el('p', {}, `No job ${id}.`));
    }
    const facts = jobFacts(job);
    this._followLogs(job);
    const checkpoints = checkpointFacts(job.checkpoint);
    return el(
      'div',
      { class: 'aigrid-detail', 'data-job-id': job.id },
      back,
      el('h3', {}, el('span', { class: 'aigrid-job-name' }, job.name), ` #${job.id} `, stateBadge(job.state)),
      job.reason ? el('p', { class: 'aigrid-reason' }, job.reason) : null,
      el('dl', {}, ...facts.flatMap(([k, v]) => [el('dt', {}, k), el('dd', {}, v)])),
      el('h4', {}, 'Placement'),
      placementTable(job.placement),
      this._actions(job),
      job.migration ? el('h4', {}, 'Migration') : null,
      job.migration ? migrationTimeline(job.migration) : null,
      checkpoints.length ? el('h4', {}, 'Checkpoints') : null,
      checkpoints.length ? checkpointSummary(job.checkpoint) : null,
      el('h4', {}, 'Output'),
      this._logs
    );
  }

  /**
   * Cancel, Checkpoint, Migrate (with its destination picker), each enabled
   * as the server's `job.actions` says, the reason it gives as the tooltip of
   * a disabled one; and the server's refusal of the last request, if any.
   */
  private _actions(job: IJob): HTMLElement {
    const busy = this._busy === job.id;
    const button = (
      cls: string,
      label: string,
      blocker: string | null,
      run: () => Promise<IJob>
    ) => {
      const b = el('button', { class: cls }, label);
      b.toggleAttribute('disabled', busy || blocker !== null);
      if (blocker !== null) {
        b.title = `${label}: not now: ${blocker}`;
      }
      b.addEventListener('click', () => void this._act(job, run));
      return b;
    };
    const cancel = button(
      'aigrid-cancel jp-mod-warn',
      'Cancel job',
      actionBlocker(job, 'cancel'),
      () => cancelJob(job.id)
    );
    const checkpoint = button('aigrid-checkpoint-job', 'Checkpoint', actionBlocker(job, 'checkpoint'), () =>
      checkpointJob(job.id)
    );
    const migrateBlocked = actionBlocker(job, 'migrate');
    const nodes = [...new Set((job.placement ?? []).map(slot => slot.node))];
    const target = nodeSelect(this.model.cluster, nodes, this._migrateTo);
    target.toggleAttribute('disabled', busy || migrateBlocked !== null);
    target.addEventListener('change', () => {
      this._migrateTo = target.value;
    });
    const migrate = button('aigrid-migrate-job', 'Migrate', migrateBlocked, () =>
      migrateJob(job.id, target.value || undefined)
    );
    const refusal = this._actionError?.jobId === job.id ? this._actionError.message : null;
    const error = refusal
      ? el('p', { class: 'aigrid-error aigrid-action-error', role: 'alert' }, refusal)
      : null;
    return el(
      'div',
      { class: 'aigrid-actions' },
      cancel,
      checkpoint,
      el('span', { class: 'aigrid-migrate' }, migrate, el('label', {}, ' to ', target)),
      error
    );
  }

  /** Run one action on the job: the server's answer shows at once, a refusal under the buttons. */
  private async _act(job: IJob, run: () => Promise<IJob>): Promise<void> {
    this._busy = job.id;
    this._actionError = null;
    this.render();
    try {
      this.model.update(await run());
    } catch (error) {
      // An AIGridError: the master's own words (409: not running, not listening, ...).
      this._actionError = { jobId: job.id, message: String((error as Error).message ?? error) };
    } finally {
      this._busy = null;
    }
    this.render();
    await this.model.refresh();
  }

  private _followLogs(job: IJob): void {
    if (this._logsFor === job.id) {
      return;
    }
    this._stopLogs();
    this._logsFor = job.id;
    this._logs = el('pre', { class: 'aigrid-logs' });
    const controller = new AbortController();
    this._logsAbort = controller;
    const out = this._logs;
    followLogs(
      job.id,
      line => {
        out.append(document.createTextNode(`[${line.rank}] ${line.line}\n`));
        out.scrollTop = out.scrollHeight;
      },
      controller.signal
    ).catch(error => {
      if (!controller.signal.aborted) {
        out.append(document.createTextNode(`(log stream ended: ${error.message ?? error})\n`));
      }
    });
  }

  private _stopLogs(): void {
    this._logsAbort?.abort();
    this._logsAbort = null;
    this._logsFor = null;
  }

  private _buildForm(): void {
    const field = (name: string, label: string, input: HTMLElement) =>
      el(
        'div',
        { class: 'aigrid-field', 'data-field': name },
        el('label', {}, label, input),
        el('div', { class: 'aigrid-field-error' })
      );
    const select = (name: string, options: string[]) => {
      const s = el('select', { name });
      for (const o of options) {
        s.append(el('option', { value: o }, o || '(default)'));
      }
      return s;
    };
    this._form = el(
      'form',
      { class: 'aigrid-form', novalidate: '' },
      field('name', 'Name', el('input', { name: 'name', placeholder: 'job' })),
      field('code', 'Python code', el('textarea', { name: 'code', rows: '6' })),
      field('command', 'or a command', el('input', { name: 'command', placeholder: 'python train.py --epochs 3' })),
      field('gpus', 'GPUs', el('input', { name: 'gpus', type: 'number', min: '0', value: '1' })),
      field('priority', 'Priority', select('priority', ['normal', 'high', 'low'])),
      field(
        'template',
        'Template',
        select('template', ['', 'single', 'pytorch-ddp', 'mpi', 'tf-parameter-server', 'inference'])
      ),
      field('image', 'Image', el('input', { name: 'image', placeholder: '(container executors)' })),
      el('button', { type: 'submit', class: 'aigrid-submit jp-mod-accept' }, 'Submit'),
      el('div', { class: 'aigrid-form-error' })
    );
    this._form.addEventListener('submit', event => {
      event.preventDefault();
      void this._submit();
    });
  }

  private async _submit(): Promise<void> {
    const form = this._form as HTMLFormElement;
    const value = (name: string) =>
      ((form.elements.namedItem(name) as HTMLInputElement | null)?.value ?? '').trim();
    for (const node of form.querySelectorAll('.aigrid-field-error, .aigrid-form-error')) {
      node.textContent = '';
    }
    const spec: Record<string, unknown> = {};
    if (value('name')) {
      spec.name = value('name');
    }
    if (value('code')) {
      spec.code = (form.elements.namedItem('code') as HTMLTextAreaElement).value;
    }
    if (value('command')) {
      spec.command = splitCommand(value('command'));
    }
    if (value('gpus') !== '') {
      spec.gpus = Number(value('gpus'));
    }
    spec.priority = value('priority') || 'normal';
    for (const name of ['template', 'image']) {
      if (value(name)) {
        spec[name] = value(name);
      }
    }
    try {
      const job = await submitJob(spec);
      form.reset();
      await this.model.refresh();
      this.open('jobs', job.id);
    } catch (error) {
      const e = error as AIGridError;
      const top = (e.field ?? '').split('.')[0];
      const target =
        form.querySelector(`.aigrid-field[data-field="${CSS.escape(top)}"] .aigrid-field-error`) ??
        form.querySelector('.aigrid-form-error');
      if (target) {
        target.textContent = e.message;
      }
    }
  }

  private _body = el('div', { class: 'aigrid-body' });
  private _form!: HTMLElement;
  private _tab: Tab = 'jobs';
  private _selected: string | null = null;
  private _filter = 'all';
  private _logs = el('pre', { class: 'aigrid-logs' });
  private _logsFor: string | null = null;
  private _logsAbort: AbortController | null = null;
  /** The job whose action is in flight: its buttons wait. */
  private _busy: string | null = null;
  /** The server's refusal of the last action, shown under that job's buttons. */
  private _actionError: { jobId: string; message: string } | null = null;
  /** Migrate's destination as the user picked it ("" = the policy chooses), kept across renders. */
  private _migrateTo = '';
}
