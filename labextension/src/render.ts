/**
 * Rendering helpers of the sidebar: plain functions from API data to DOM.
 * Text always goes in through `textContent`, never as markup, so a job named
 * `<img onerror=...>` shows as exactly that text.
 */
import { ICluster, IClusterGpu, IJob, IPlacementSlot } from './types';

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
    el('span', { class: 'aigrid-job-age' }, formatAge(job.submitted_at, now))
  );
}

/** Nodes as rows, their GPUs as cells, each naming the rank it holds. */
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
    ['Migrations', job.migration ? JSON.stringify(job.migration) : 'none']
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
