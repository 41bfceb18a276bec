/**
 * Rendering helpers of the sidebar: plain functions from API data to DOM.
 * Text always goes in through `textContent`, never as markup, so a job named
 * `<img onerror=...>` shows as exactly that text.
 */
import {
  ICluster,
  IClusterGpu,
  IJob,
  IJobCheckpoint,
  IMigration,
  IPlacementSlot,
  MIGRATION_PHASES
} from './types';

export const STATE_COLOURS: Record<string, string> = {
  queued: 'var(--jp-warn-color1)',
  starting: 'var(--jp-info-color1)',
  running: 'var(--jp-success-color1)',
  succeeded: 'var(--jp-success-color0)',
  failed: 'var(--jp-error-color1)',
  cancelled: 'var(--jp-layout-color4)',
  preempted: 'var(--jp-warn-color0)'
};

/** A glyph per state, so colour is never the only cue. */
export const STATE_ICONS: Record<string, string> = {
  queued: '⏳',
  starting: '▶',
  running: '●',
  succeeded: '✔',
  failed: '✖',
  cancelled: '◼',
  preempted: '⏸'
};

/** Colours for the jobs on the cluster map, chosen by job id. */
const JOB_COLOURS = [
  '#42a5f5',
  '#66bb6a',
  '#ffa726',
  '#ab47bc',
  '#26c6da',
  '#ef5350',
  '#8d6e63',
  '#d4e157'
];

type Child = Node | string | null | undefined | false;

/** Make an element; string children become text nodes (escaped by the DOM). */
export function el(
  tag: string,
  attrs: Record<string, string> = {},
  ...children: Child[]
): HTMLElement {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === 'class') {
      node.className = value;
    } else {
      node.setAttribute(key, value);
    }
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) {
      continue;
    }
    node.append(typeof child === 'string' ? document.createTextNode(child) : child);
  }
  return node;
}

/** "42s", "5m", "3h", "2d" since `iso`. */
export function formatAge(iso: string | null, now: number = Date.now()): string {
  if (!iso) {
    return '-';
  }
  const seconds = Math.max(0, (now - Date.parse(iso)) / 1000);
  for (const [unit, size] of [
    ['d', 86400],
    ['h', 3600],
    ['m', 60]
  ] as const) {
    if (seconds >= size) {
      return `${Math.floor(seconds / size)}${unit}`;
    }
  }
  return `${Math.floor(seconds)}s`;
}

export function stateBadge(state: string): HTMLElement {
  const badge = el(
    'span',
    { class: `aigrid-state aigrid-state-${state}`, title: state },
    `${STATE_ICONS[state] ?? '?'} ${state}`
  );
  badge.style.color = STATE_COLOURS[state] ?? 'inherit';
  return badge;
}

/** One row of the jobs list. */
export function jobRow(job: IJob, now: number = Date.now()): HTMLElement {
  const where =
    job.state === 'queued' && job.queue_position ? `#${job.queue_position} in queue` : '';
  return el(
    'li',
    { class: 'aigrid-job', 'data-job-id': job.id, 'data-state': job.state },
    stateBadge(job.state),
    el('span', { class: 'aigrid-job-name', title: job.name }, job.name),
    el('span', { class: 'aigrid-job-id' }, `#${job.id}`),
    el('span', { class: 'aigrid-job-owner' }, job.owner),
    el('span', { class: 'aigrid-job-gpus' }, `${job.gpus} GPU${job.gpus === 1 ? '' : 's'}`),
    el('span', { class: 'aigrid-job-qos' }, job.qos),
    el('span', { class: 'aigrid-job-queue' }, where),
    el('span', { class: 'aigrid-job-age' }, formatAge(job.submitted_at, now)),
    migrationActive(job.migration) ? migratingBadge(job.migration as IMigration) : null
  );
}

/**
 * The list row's mark of a job being moved ("migrating") or restarted from a
 * checkpoint ("resuming").
 */
export function migratingBadge(migration: IMigration): HTMLElement {
  return el(
    'span',
    {
      class: 'aigrid-migrating',
      title: `${migrationTitle(migration)}: ${migration.state}`
    },
    `⇄ ${migration.kind === 'resume' ? 'resuming' : 'migrating'}`
  );
}

/** The facts a job's detail lists, as (label, text) pairs, in order. */
export function jobFacts(job: IJob): [string, string][] {
  const facts: [string, string][] = [
    ['Owner', job.owner],
    ['GPUs', `${job.gpus} (${job.replicas} replica${job.replicas === 1 ? '' : 's'})`],
    ['QoS', job.qos]
  ];
  if (job.description) {
    facts.push(['Template', job.description.template]);
    const image = job.description.image;
    facts.push(['Image', image ? image.ref : "the server's environment"]);
  }
  facts.push(
    ['Restarts', String(job.restarts)],
    ['Attempt', String(job.attempt)],
    [
      'Migration',
      job.migration
        ? `${migrationTitle(job.migration)} (${job.migration.kind}): ${job.migration.state}`
        : 'none'
    ]
  );
  if (job.queue_position) {
    facts.push(['Queue position', String(job.queue_position)]);
  }
  return facts;
}

export function placementTable(placement: IPlacementSlot[] | null): HTMLElement {
  if (!placement || placement.length === 0) {
    return el('p', { class: 'aigrid-muted' }, 'Not placed yet.');
  }
  const byNode = new Map<string, HTMLElement[]>();
  for (const slot of placement) {
    const cells = byNode.get(slot.node) ?? [];
    const gpus = slot.gpus.length ? slot.gpus : [null];
    for (const gpu of gpus) {
      const label = gpu === null ? 'CPU' : `GPU ${gpu.index}${gpu.simulated ? ' (sim)' : ''}`;
      cells.push(el('td', { class: 'aigrid-slot' }, `${label}: rank ${slot.rank}`));
    }
    byNode.set(slot.node, cells);
  }
  const rows = [...byNode.entries()].map(([node, cells]) =>
    el('tr', {}, el('th', {}, node), ...cells)
  );
  return el('table', { class: 'aigrid-placement' }, el('tbody', {}, ...rows));
}

export function jobColour(jobId: string): string {
  let hash = 0;
  for (const ch of jobId) {
    hash = (hash * 31 + ch.charCodeAt(0)) >>> 0;
  }
  return JOB_COLOURS[hash % JOB_COLOURS.length];
}

function bar(label: string, fraction: number): HTMLElement {
  const fill = el('span', { class: 'aigrid-bar-fill' });
  fill.style.width = `${Math.round(Math.min(1, Math.max(0, fraction)) * 100)}%`;
  return el('span', { class: 'aigrid-bar', title: label }, fill);
}

function gpuCell(gpu: IClusterGpu): HTMLElement {
  const title = `${gpu.model} ${gpu.uuid}${gpu.simulated ? ' (simulated: a CPU slot)' : ''}`;
  const cell = el(
    'div',
    {
      class: `aigrid-gpu${gpu.simulated ? ' aigrid-gpu-simulated' : ''}${gpu.job_id ? ' aigrid-gpu-busy' : ''}`,
      title
    },
    el('span', { class: 'aigrid-gpu-index' }, `GPU ${gpu.index}`),
    gpu.job_id ? el('span', { class: 'aigrid-gpu-job' }, `#${gpu.job_id} r${gpu.rank}`) : null,
    gpu.utilization_pct !== undefined
      ? bar(`utilisation ${gpu.utilization_pct}%`, gpu.utilization_pct / 100)
      : null,
    gpu.memory_used_mb !== undefined && gpu.memory_mb
      ? bar(`memory ${gpu.memory_used_mb} / ${gpu.memory_mb} MB`, gpu.memory_used_mb / gpu.memory_mb)
      : null
  );
  if (gpu.job_id) {
    cell.style.background = jobColour(gpu.job_id);
  }
  return cell;
}

/** Nodes x GPUs, coloured by the job on each GPU; simulated GPUs marked. */
export function clusterMap(cluster: ICluster): HTMLElement {
  return el(
    'div',
    { class: 'aigrid-cluster' },
    el(
      'p',
      { class: 'aigrid-cluster-summary' },
      `${cluster.gpus_free}/${cluster.gpus_total} GPUs free · ${cluster.executor} executor`
    ),
    cluster.simulated
      ? el(
          'p',
          { class: 'aigrid-simulated-note' },
          'SIMULATED GPUs (dashed): CPU slots, no real GPU on this machine.'
        )
      : null,
    ...cluster.nodes.map(node =>
      el(
        'div',
        { class: 'aigrid-node', 'data-node': node.name },
        el('div', { class: 'aigrid-node-name' }, node.name),
        el('div', { class: 'aigrid-node-gpus' }, ...node.gpus.map(gpuCell))
      )
    )
  );
}

/** The status bar's words: "AI Grid: 3 running · 2 queued · 6/8 GPUs". */
export function statusText(jobs: IJob[], cluster: ICluster | null): string {
  const running = jobs.filter(j => j.state === 'running' || j.state === 'starting').length;
  const queued = jobs.filter(j => j.state === 'queued').length;
  const gpus = cluster ? ` · ${cluster.gpus_total - cluster.gpus_free}/${cluster.gpus_total} GPUs` : '';
  return `AI Grid: ${running} running · ${queued} queued${gpus}`;
}

/** Split a command line into argv: whitespace separates, quotes group. */
export function splitCommand(text: string): string[] {
  const out: string[] = [];
  const pattern = /"([^"]*)"|'([^']*)'|(\S+)/g;
  let match: RegExpExecArray | null;
  while ((match = pattern.exec(text)) !== null) {
    out.push(match[1] ?? match[2] ?? match[3]);
  }
  return out;
}

/** "512 B", "1.5 KiB", "20 MiB", "3.2 GiB" (powers of 1024); "-" when unknown. */
export function formatBytes(bytes: number | null | undefined): string {
  if (bytes === null || bytes === undefined || !Number.isFinite(bytes) || bytes < 0) {
    return '-';
  }
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let value = bytes;
  let unit = 0;
  // 1023.6 KiB reads better as "1.0 MiB" than as "1024 KiB".
  while (value >= 1023.5 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  if (unit === 0) {
    return `${Math.round(value)} B`;
  }
  return `${value < 9.95 ? value.toFixed(1) : Math.round(value)} ${units[unit]}`;
}

/** "0.4s", "12s", "2m 05s", "1h 02m"; "-" when unknown. */
export function formatDuration(seconds: number | null | undefined): string {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds) || seconds < 0) {
    return '-';
  }
  if (seconds < 9.95) {
    return `${seconds.toFixed(1)}s`;
  }
  const whole = Math.floor(seconds);
  const pad = (n: number) => String(n).padStart(2, '0');
  if (whole < 60) {
    return `${whole}s`;
  }
  if (whole < 3600) {
    return `${Math.floor(whole / 60)}m ${pad(whole % 60)}s`;
  }
  return `${Math.floor(whole / 3600)}h ${pad(Math.floor((whole % 3600) / 60))}m`;
}

/** Whether a migration (or resume) is under way: neither done nor failed. */
export function migrationActive(migration: IMigration | null | undefined): boolean {
  return !!migration && migration.state !== 'done' && migration.state !== 'failed';
}

/** "Migration #2" or "Resume #2". */
export function migrationTitle(migration: IMigration): string {
  return `${migration.kind === 'resume' ? 'Resume' : 'Migration'} #${migration.id}`;
}

/**
 * Why the job cannot be migrated now, or null if it can: it must be running
 * (and not being stopped), listen for checkpoints (its ranks call
 * runtime.should_checkpoint()), and have no migration under way. The server
 * checks the same and says why (409) if the sidebar's view is stale.
 */
export function migrateBlocker(job: IJob): string | null {
  if (job.state !== 'running') {
    return `the job is ${job.state}`;
  }
  if (job.stopping) {
    return 'the job is stopping';
  }
  if (!job.checkpoint?.listening) {
    return (
      'the job does not listen for checkpoints: ' +
      'its ranks never called runtime.should_checkpoint()'
    );
  }
  if (migrationActive(job.migration)) {
    return `${migrationTitle(job.migration as IMigration)} is under way`;
  }
  return null;
}

/** Why the job cannot checkpoint now (as migrateBlocker, or a checkpoint being written), or null. */
export function checkpointBlocker(job: IJob): string | null {
  const blocker = migrateBlocker(job);
  if (blocker !== null) {
    return blocker;
  }
  if (job.checkpoint?.request?.state === 'pending') {
    return 'a checkpoint is being written';
  }
  return null;
}

export function canMigrate(job: IJob): boolean {
  return migrateBlocker(job) === null;
}

export function canCheckpoint(job: IJob): boolean {
  return checkpointBlocker(job) === null;
}

/** A phase of the timeline: done, the one running now, still to come, or the one that failed. */
export type PhaseStatus = 'done' | 'current' | 'pending' | 'failed';

export interface IMigrationStep {
  phase: string;
  status: PhaseStatus;
  /** Its duration; for the running phase, the time so far. null: not started. */
  duration_s: number | null;
  bytes: number | null;
}

function secondsBetween(from: string, to: string | number): number | null {
  const start = Date.parse(from);
  const end = typeof to === 'number' ? to : Date.parse(to);
  return Number.isFinite(start) && Number.isFinite(end) ? Math.max(0, (end - start) / 1000) : null;
}

/**
 * The migration's phases as its timeline shows them: those it went through,
 * in order, then (while it is under way) those still to come.
 */
export function migrationSteps(migration: IMigration, now: number = Date.now()): IMigrationStep[] {
  const active = migrationActive(migration);
  const phases = migration.phases ?? [];
  const steps: IMigrationStep[] = phases.map((phase, i) => {
    const last = i === phases.length - 1;
    let status: PhaseStatus = 'done';
    if (last && migration.state === 'failed') {
      status = 'failed';
    } else if (last && active && (phase.finished_at === null || phase.phase === migration.state)) {
      status = 'current';
    }
    let duration = phase.duration_s;
    if (duration === null || duration === undefined) {
      duration = phase.finished_at
        ? secondsBetween(phase.started_at, phase.finished_at)
        : status === 'current'
          ? secondsBetween(phase.started_at, now)
          : null;
    }
    return { phase: phase.phase, status, duration_s: duration, bytes: phase.bytes ?? null };
  });
  const at = (MIGRATION_PHASES as readonly string[]).indexOf(migration.state);
  if (active && at >= 0) {
    const seen = new Set(steps.map(step => step.phase));
    for (const phase of MIGRATION_PHASES.slice(at)) {
      if (!seen.has(phase)) {
        steps.push({
          phase,
          status: phase === migration.state ? 'current' : 'pending',
          duration_s: null,
          bytes: null
        });
      }
    }
  }
  return steps;
}

const PHASE_ICONS: Record<PhaseStatus, string> = {
  done: '✔',
  current: '●',
  pending: '○',
  failed: '✖'
};

const MIGRATION_ICONS: Record<string, string> = {
  done: '✔',
  failed: '✖'
};

/** A CSS class suffix made from server data: letters, digits and dashes only. */
function token(text: string): string {
  return String(text).toLowerCase().replace(/[^a-z0-9-]/g, '-');
}

function stepItem(step: IMigrationStep): HTMLElement {
  let duration = '';
  if (step.duration_s !== null) {
    duration = formatDuration(step.duration_s) + (step.status === 'current' ? '…' : '');
  }
  const attrs: Record<string, string> = {
    class: `aigrid-phase aigrid-phase-${step.status}`,
    'data-phase': step.phase,
    title: `${step.phase}: ${step.status}`
  };
  if (step.status === 'current') {
    attrs['aria-current'] = 'step';
  }
  return el(
    'li',
    attrs,
    el('span', { class: 'aigrid-phase-icon', 'aria-hidden': 'true' }, PHASE_ICONS[step.status]),
    el('span', { class: 'aigrid-phase-name' }, step.phase),
    el('span', { class: 'aigrid-phase-duration' }, duration),
    el('span', { class: 'aigrid-phase-bytes' }, step.bytes !== null ? formatBytes(step.bytes) : '')
  );
}

/**
 * A migration's timeline: its state, the nodes it moves the job from and to,
 * why, the checkpoint it carries, each phase with its duration and bytes (the
 * running one highlighted), and the error if it failed.
 */
export function migrationTimeline(migration: IMigration, now: number = Date.now()): HTMLElement {
  const active = migrationActive(migration);
  const nodes = (names: string[] | null | undefined, none: string) =>
    names && names.length ? names.join(', ') : none;
  const took =
    migration.finished_at && migration.started_at
      ? secondsBetween(migration.started_at, migration.finished_at)
      : null;
  const state = el(
    'span',
    {
      class: `aigrid-migration-state aigrid-migration-state-${token(migration.state)}`,
      title: migration.state
    },
    `${MIGRATION_ICONS[migration.state] ?? '●'} ${migration.state}`
  );
  return el(
    'div',
    {
      class: `aigrid-migration${active ? ' aigrid-migration-active' : ''}`,
      'data-migration-id': String(migration.id),
      'data-state': migration.state
    },
    el(
      'div',
      { class: 'aigrid-migration-head' },
      el(
        'span',
        { class: 'aigrid-migration-title' },
        `${migrationTitle(migration)} (${migration.kind})`
      ),
      state
    ),
    el(
      'div',
      { class: 'aigrid-migration-route' },
      el('span', { class: 'aigrid-migration-from' }, nodes(migration.from, '-')),
      ' → ',
      el(
        'span',
        { class: 'aigrid-migration-to' },
        nodes(migration.to, active ? 'not chosen yet' : '-')
      )
    ),
    migration.reason ? el('div', { class: 'aigrid-migration-reason' }, migration.reason) : null,
    migration.checkpoint
      ? el('div', { class: 'aigrid-migration-checkpoint' }, `Checkpoint ${migration.checkpoint}`)
      : null,
    el('ol', { class: 'aigrid-phases' }, ...migrationSteps(migration, now).map(stepItem)),
    migration.state === 'failed'
      ? el(
          'div',
          { class: 'aigrid-migration-error' },
          migration.error || 'failed (no reason given)'
        )
      : null,
    el(
      'div',
      { class: 'aigrid-migration-time aigrid-muted' },
      [
        `started ${formatAge(migration.started_at, now)} ago`,
        took !== null ? `took ${formatDuration(took)}` : null,
        typeof migration.bytes === 'number' ? `moved ${formatBytes(migration.bytes)}` : null
      ]
        .filter(part => part !== null)
        .join(' · ')
    )
  );
}

/** The facts of a job's checkpoints, as (label, text) pairs; none if the server has none. */
export function checkpointFacts(
  checkpoint: IJobCheckpoint | null | undefined,
  now: number = Date.now()
): [string, string][] {
  if (!checkpoint) {
    return [];
  }
  const facts: [string, string][] = [
    [
      'Listening',
      checkpoint.listening
        ? 'yes: checkpoint and migrate possible'
        : 'no: its ranks never called runtime.should_checkpoint()'
    ]
  ];
  const latest = checkpoint.latest;
  facts.push([
    'Latest',
    latest
      ? [
          latest.name,
          latest.step !== null && latest.step !== undefined ? `step ${latest.step}` : null,
          formatBytes(latest.bytes),
          typeof latest.seconds === 'number'
            ? `written in ${formatDuration(latest.seconds)}`
            : null,
          `${formatAge(latest.at, now)} ago`
        ]
          .filter(part => part !== null)
          .join(' · ')
      : 'none'
  ]);
  const request = checkpoint.request;
  if (request) {
    facts.push([
      'Request',
      [
        `${request.state} (${request.id})`,
        `requested ${formatAge(request.requested_at, now)} ago`,
        request.reason || null
      ]
        .filter(part => part !== null)
        .join(' · ')
    ]);
  }
  return facts;
}

/** The checkpoint facts as a list; the request's state is marked for colour. */
export function checkpointSummary(
  checkpoint: IJobCheckpoint | null | undefined,
  now: number = Date.now()
): HTMLElement {
  const request = checkpoint?.request;
  const list = el('dl', { class: 'aigrid-checkpoint' });
  for (const [label, text] of checkpointFacts(checkpoint, now)) {
    const attrs: Record<string, string> = { 'data-fact': label.toLowerCase() };
    if (label === 'Request' && request) {
      attrs.class = `aigrid-request aigrid-request-${token(request.state)}`;
    }
    list.append(el('dt', {}, label), el('dd', attrs, text));
  }
  return list;
}

/**
 * The destination picker of Migrate: "any node (policy chooses)" (value ""),
 * then every node of the cluster, the job's own marked; `selected` kept if it
 * is still a node.
 */
export function nodeSelect(
  cluster: ICluster | null,
  current: string[] = [],
  selected = ''
): HTMLSelectElement {
  const select = el('select', {
    class: 'aigrid-migrate-node',
    'aria-label': 'Destination node'
  }) as HTMLSelectElement;
  const names = (cluster?.nodes ?? []).map(node => node.name);
  for (const [value, label] of [
    ['', 'any node (policy chooses)'],
    ...names.map(name => [name, current.includes(name) ? `${name} (current)` : name])
  ]) {
    const option = el('option', { value }, label) as HTMLOptionElement;
    option.selected = value === selected;
    select.append(option);
  }
  if (!names.includes(selected)) {
    select.value = '';
  }
  return select;
}
