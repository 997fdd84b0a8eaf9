// The selected node's detail pane: its count rule, counter set, IPv4/IPv6
// split and interfaces (kind, uplink, counted or not); its loader also
// fetches the billing period for billing.js.

import { api, ApiError, coalesced } from './api.js';
import { loaded } from './banner.js';
import { renderBilling } from './billing.js';
import { $, bytesCell, element, setText, setTitle } from './dom.js';
import { exactBytes, formatBytes, formatOffset, parseCounter } from './format.js';
import { markDirty, nodesLoader } from './nodes.js';
import { DETAIL_INTERVAL_MS } from './settings.js';
import { FAMILIES, parseFamilies, state } from './state.js';
import { handleFailure } from './token.js';

const RULE_LABELS = {
  all: 'counts every interface but loopback',
  uplink: 'counts physical interfaces and uplinks only',
};
const KIND_LABELS = {
  container_bridge: 'container bridge', vlan: 'VLAN', vxlan: 'VXLAN',
  tun: 'TUN', tap: 'TAP', wireguard: 'WireGuard', macvlan: 'macvlan',
};

/** Whether the node's count rule counts an interface's traffic. */
function isCounted(rule, iface) {
  // Loopback (`lo*`) is shown, never counted, whatever the rule.
  if (iface.name.startsWith('lo')) return false;
  if (rule !== 'uplink') return true;
  return iface.state !== 'retired' && (iface.kind === 'physical' || iface.defaultRoute === true);
}

/** The node's interfaces and billing period: one request each, together. */
export const detailLoader = coalesced(async () => {
  if (state.locked) return;
  const id = state.selected;
  if (!id) {
    state.detail = null;
    renderDetail();
    return;
  }
  const path = `/api/v1/nodes/${encodeURIComponent(id)}`;
  const [detail, billing] = await Promise.allSettled([api(path), api(`${path}/billing`)]);
  if (detail.status === 'rejected') {
    if (detail.reason instanceof ApiError && detail.reason.status === 404) {
      nodesLoader.now();
      return;
    }
    handleFailure('the node’s interfaces', detail.reason);
    return;
  }
  loaded('the node’s interfaces');
  let period = null;
  if (billing.status === 'fulfilled') {
    period = billing.value;
    loaded('the billing period');
  } else if (billing.reason instanceof ApiError && billing.reason.status === 404) {
    // A collector without billing, or a node gone meanwhile: no panel.
    loaded('the billing period');
  } else {
    handleFailure('the billing period', billing.reason);
  }
  if (id !== state.selected) return;
  const body = detail.value;
  const node = state.nodes.get(id);
  if (node) {
    node.families = parseFamilies(body.families);
    node.countRule = body.countRule;
    if ('quotaCrossed' in body && Date.parse(body.traffic && body.traffic.periodStart) === Date.parse(node.traffic.periodStart || '')) {
      node.quotaCrossed = body.quotaCrossed;
      markDirty(id);
    }
  }
  state.detail = { id, interfaces: body.interfaces || [], billing: period };
  renderDetail();
}, DETAIL_INTERVAL_MS);

/** The selected node's interfaces, address families and billing. */
export function renderDetail() {
  const node = state.nodes.get(state.selected);
  $('detail').hidden = !node;
  if (!node) return;
  const detail = state.detail && state.detail.id === state.selected ? state.detail : null;
  setText($('detail-node'), node.name);
  const rule = RULE_LABELS[node.countRule] ? node.countRule : null;
  const ruleLabel = $('count-rule');
  setText(ruleLabel, rule ? RULE_LABELS[rule] : '');
  ruleLabel.dataset.rule = rule || '';
  renderFamilies(node.families);
  renderCounterSet(node);
  renderInterfaces(detail, rule);
  renderBilling(detail ? detail.billing : null);
}

/** Which counter set is followed, the node's clock, its stale heartbeats. */
function renderCounterSet(node) {
  const parts = [];
  const set = node.counterSet;
  if (set) {
    parts.push(`Counter set ${set.epoch.slice(0, 12)} of boot ${set.bootId.slice(0, 8)}, generation ${set.generation === '0' ? 'unknown' : set.generation}`);
  }
  if (node.clock && Number.isFinite(node.clock.offsetMs) && Math.abs(node.clock.offsetMs) >= 1000) {
    parts.push(`clock ${formatOffset(node.clock.offsetMs)}${node.clock.skewed ? ' (skewed: check NTP)' : ''}`);
  }
  if (node.stale && node.stale.heartbeats && node.stale.heartbeats !== '0') {
    parts.push(`${node.stale.heartbeats} stale heartbeat${node.stale.heartbeats === '1' ? '' : 's'}${node.stale.flagged ? ', nothing counted now' : ''}`);
  }
  const note = $('counter-set');
  note.hidden = parts.length === 0;
  setText(note, parts.join(' · '));
}

function renderFamilies(families) {
  $('families').hidden = !families;
  if (!families) return;
  const sums = {};
  for (const family of FAMILIES) {
    const name = family === 'ipv4' ? 'IPv4' : 'IPv6';
    for (const [direction, arrow] of [['download', '↓'], ['upload', '↑']]) {
      const value = families[family][direction];
      const e = $(`family-${family}-${direction}`);
      e.dataset.bytes = value === null ? '' : value.toString();
      setText(e, `${arrow} ${formatBytes(value)}`);
      setTitle(e, `${name} ${direction} ${exactBytes(value)}`);
    }
    sums[family] = (families[family].download ?? 0n) + (families[family].upload ?? 0n);
  }
  const all = sums.ipv4 + sums.ipv6;
  setText($('families-note'), all > 0n
    ? 'Since enrolment, counted by the node’s rule; other protocols (ARP, …) are in neither.'
    : 'No traffic split by address family yet (an agent counting with procfs cannot split it).');
  for (const family of FAMILIES) {
    const share = all > 0n ? Number((sums[family] * 1000n) / all) / 10 : null;
    setText($(`family-${family}-share`), share === null ? '–' : `${share.toFixed(1)} %`);
    $(`family-bar-${family}`).style.width = `${share ?? 0}%`;
  }
}

function renderInterfaces(detail, rule) {
  const interfaces = detail ? detail.interfaces : [];
  const rows = interfaces.map((iface) => {
    const row = document.createElement('tr');
    row.dataset.interface = iface.name;
    const counted = isCounted(rule, iface);
    row.dataset.counted = String(counted);
    if (!counted) {
      row.title = iface.name.startsWith('lo')
        ? 'Not counted: loopback traffic never leaves the node'
        : 'Not counted: this node counts physical interfaces and uplinks only';
    }
    const name = element('th', 'iface-name');
    name.scope = 'row';
    name.dataset.field = 'name';
    name.append(element('span', '', iface.name));
    if (iface.defaultRoute) {
      const uplink = element('span', 'tag tag-uplink', 'uplink');
      uplink.dataset.field = 'uplink';
      uplink.title = 'Carries a default route';
      name.append(uplink);
    }
    // Only what is not the usual "attached" is said.
    if (iface.state !== 'attached') {
      const status = element('span', 'tag tag-state', iface.state);
      status.dataset.field = 'state';
      status.title = iface.state === 'gone'
        ? 'Went away; its counts are kept'
        : 'Holds the counts of interfaces gone long ago';
      name.append(status);
    }
    const kind = element('td');
    kind.dataset.field = 'kind';
    kind.dataset.kind = iface.kind || '';
    kind.append(element('span', `tag tag-kind${iface.kind === 'physical' ? ' tag-physical' : ''}`,
      KIND_LABELS[iface.kind] || iface.kind || '—'));
    row.append(name, kind,
      bytesCell('rxBytes', parseCounter(iface.rxBytes)),
      bytesCell('txBytes', parseCounter(iface.txBytes)));
    for (const family of FAMILIES) {
      const split = iface[family];
      const td = element('td', 'num');
      td.dataset.field = family;
      if (split) {
        const rx = parseCounter(split.rx);
        const tx = parseCounter(split.tx);
        td.dataset.rx = rx === null ? '' : rx.toString();
        td.dataset.tx = tx === null ? '' : tx.toString();
        td.textContent = `${formatBytes(rx)} / ${formatBytes(tx)}`;
        td.title = `received ${exactBytes(rx)}\nsent ${exactBytes(tx)}`;
      } else {
        td.textContent = '—';
        td.classList.add('muted');
        td.title = 'The agent’s counting source does not split by address family';
      }
      row.append(td);
    }
    return row;
  });
  $('interfaces-body').replaceChildren(...rows);
  $('interfaces-empty').hidden = !detail || rows.length > 0;
}
