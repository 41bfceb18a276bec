/** A job's checkpoints as the detail lists them: listening, the latest, the request. */
import { el, joined, token } from './dom';
import { formatAge, formatBytes, formatDuration } from './format';
import { IJobCheckpoint } from './types';

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
        ? 'yes: its ranks answer checkpoint requests'
        : 'no: its ranks never called runtime.should_checkpoint()'
    ]
  ];
  const latest = checkpoint.latest;
  facts.push([
    'Latest',
    latest
      ? joined([
          latest.name,
          latest.step !== null && latest.step !== undefined && `step ${latest.step}`,
          formatBytes(latest.bytes),
          typeof latest.seconds === 'number' && `written in ${formatDuration(latest.seconds)}`,
          `${formatAge(latest.at, now)} ago`
        ])
      : 'none'
  ]);
  const request = checkpoint.request;
  if (request) {
    facts.push([
      'Request',
      joined([
        `${request.state} (${request.id})`,
        `requested ${formatAge(request.requested_at, now)} ago`,
        request.reason
      ])
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
