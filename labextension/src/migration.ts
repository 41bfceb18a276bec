/**
 * A job's migration (or resume from a checkpoint): the list row's badge and
 * the detail's timeline. The server decides every step's status, duration and
 * bytes (`migration.steps`, from `views.migration_steps`): this module only
 * draws them, so the sidebar and the notebook widget cannot disagree.
 */
import { el, joined, token } from './dom';
import { formatAge, formatBytes, formatDuration } from './format';
import { IMigration, IMigrationStep, StepStatus } from './types';

/** Whether a migration (or resume) is under way: neither done nor failed. */
export function migrationActive(migration: IMigration | null | undefined): boolean {
  return !!migration && migration.state !== 'done' && migration.state !== 'failed';
}

/** "Migration #2" or "Resume #2". */
export function migrationTitle(migration: IMigration): string {
  return `${migration.kind === 'resume' ? 'Resume' : 'Migration'} #${migration.id}`;
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

const STEP_ICONS: Record<StepStatus, string> = {
  done: '✔',
  active: '●',
  pending: '○',
  failed: '✖',
  skipped: '–'
};

const MIGRATION_ICONS: Record<string, string> = {
  done: '✔',
  failed: '✖'
};

function stepItem(step: IMigrationStep): HTMLElement {
  let duration = '';
  if (step.duration_s !== null) {
    // The active step's duration is the time so far: it is still growing.
    duration = formatDuration(step.duration_s) + (step.status === 'active' ? '…' : '');
  }
  const attrs: Record<string, string> = {
    class: `aigrid-phase aigrid-phase-${token(step.status)}`,
    'data-phase': step.phase,
    title: `${step.phase}: ${step.status}`
  };
  if (step.status === 'active') {
    attrs['aria-current'] = 'step';
  }
  return el(
    'li',
    attrs,
    el('span', { class: 'aigrid-phase-icon', 'aria-hidden': 'true' }, STEP_ICONS[step.status] ?? '?'),
    el('span', { class: 'aigrid-phase-name' }, step.phase),
    el('span', { class: 'aigrid-phase-duration' }, duration),
    el('span', { class: 'aigrid-phase-bytes' }, step.bytes !== null ? formatBytes(step.bytes) : '')
  );
}

/**
 * A migration's timeline: its state, the nodes it moves the job from and to,
 * why, the checkpoint it carries, the server's steps with their durations and
 * bytes (the active one highlighted), and the error if it failed.
 */
export function migrationTimeline(migration: IMigration, now: number = Date.now()): HTMLElement {
  const active = migrationActive(migration);
  const nodes = (names: string[] | null | undefined, none: string) =>
    names && names.length ? names.join(', ') : none;
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
    el('ol', { class: 'aigrid-phases' }, ...(migration.steps ?? []).map(stepItem)),
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
      joined([
        `started ${formatAge(migration.started_at, now)} ago`,
        typeof migration.duration_s === 'number' && `took ${formatDuration(migration.duration_s)}`,
        typeof migration.bytes === 'number' && `moved ${formatBytes(migration.bytes)}`
      ])
    )
  );
}
