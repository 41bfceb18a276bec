/**
 * The job list and the job detail's facts, placement and action buttons:
 * plain functions from API data to DOM. The migration timeline is drawn in
 * `migration.ts`, checkpoints in `checkpoint.ts`, the cluster map in
 * `cluster.ts`; sizes and times are written by `format.ts`.
 */
import { el } from './dom';
import { formatAge } from './format';
import { migratingBadge, migrationActive, migrationTitle } from './migration';
import { ICluster, IJob, IJobActions, IMigration, IPlacementSlot } from './types';

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

/**
 * Why the server would refuse `action` on the job now, or null if it allows
 * it: the job's `actions`, computed by the master from the rule it refuses
 * requests with. The sidebar has no rule of its own; if its view is stale,
 * the request's refusal (409) shows under the buttons.
 */
export function actionBlocker(job: IJob, action: keyof IJobActions): string | null {
  const verdict = job.actions?.[action];
  if (!verdict) {
    return 'the server did not say whether this is allowed';
  }
  return verdict.allowed ? null : verdict.reason || 'not allowed now';
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
