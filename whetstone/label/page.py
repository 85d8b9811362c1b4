"""The labelling page: static HTML and one script; every task arrives as JSON from /api/state.

Escaping: model output, prompts and notes reach the DOM only through `textContent`
(never innerHTML), so `<script>` in an answer is shown as those characters. The
page has no inline script, and the server's Content-Security-Policy allows only
/page.js, so even a slip here could not run injected code. The server writes its write
token into the `whetstone-token` meta tag of each page it serves.

Keyboard: a or 1 = A is better, b or 2 = B is better, t or 0 = tie, s = skip,
u = undo the last judgement, Escape leaves a text box (keys are ignored while typing).
"""

PAGE_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="whetstone-token" content="__TOKEN__">
<title>whetstone label</title>
<style>
  body { font: 15px/1.45 system-ui, sans-serif; margin: 0; background: #f4f5f7; color: #1d2330; }
  header { display: flex; gap: 1.2em; align-items: center; padding: .6em 1.2em; background: #1d2330; color: #fff; }
  header h1 { font-size: 1.05em; margin: 0; font-weight: 600; }
  #progress-bar { flex: 1; height: 8px; background: #3a4254; border-radius: 4px; overflow: hidden; max-width: 360px; }
  #progress-fill { height: 100%; width: 0; background: #5cc489; }
  main { max-width: 1180px; margin: 0 auto; padding: 1em 1.2em 3em; }
  .card { background: #fff; border: 1px solid #d9dce3; border-radius: 8px; padding: .8em 1em; margin: .8em 0; }
  .role { font-size: .75em; text-transform: uppercase; letter-spacing: .06em; color: #6b7385; }
  .text { white-space: pre-wrap; overflow-wrap: anywhere; margin: .2em 0 .6em; }
  .answers { display: grid; grid-template-columns: 1fr 1fr; gap: 1em; }
  .answers .card { margin: 0; display: flex; flex-direction: column; }
  .answers .text { flex: 1; font-family: ui-monospace, monospace; font-size: .92em; }
  .rating { display: flex; gap: .3em; align-items: center; font-size: .85em; color: #6b7385; }
  .rate { width: 2em; padding: .2em 0; border: 1px solid #c3c8d3; background: #fff; border-radius: 4px; cursor: pointer; }
  .rate.on { background: #2f6fde; color: #fff; border-color: #2f6fde; }
  .choices { display: flex; gap: .6em; margin: 1em 0; flex-wrap: wrap; }
  .choices button, header button { font: inherit; padding: .45em 1.1em; border-radius: 6px; cursor: pointer;
    border: 1px solid #2f6fde; background: #2f6fde; color: #fff; }
  .choices button.secondary { background: #fff; color: #2f6fde; }
  header button { background: transparent; border-color: #8792a8; padding: .25em .8em; }
  button:disabled { opacity: .45; cursor: default; }
  kbd { font: .8em ui-monospace, monospace; border: 1px solid currentColor; border-radius: 3px; padding: 0 .3em;
    opacity: .8; margin-left: .4em; }
  textarea { width: 100%; box-sizing: border-box; font: .92em ui-monospace, monospace; min-height: 4.5em;
    border: 1px solid #c3c8d3; border-radius: 6px; padding: .4em; }
  label.field { display: block; font-size: .85em; color: #4a5263; margin-top: .6em; }
  .small { font-size: .8em; color: #6b7385; }
  .small button { font-size: 1em; border: 0; background: none; color: #2f6fde; cursor: pointer; padding: 0 .3em; }
  #status { min-height: 1.4em; font-size: .9em; }
  #status.error { color: #b3261e; }
  #done-card { text-align: center; font-size: 1.1em; }
  [hidden] { display: none !important; }
</style>
</head>
<body>
<header>
  <h1>whetstone label</h1>
  <span id="who"></span>
  <div id="progress-bar"><div id="progress-fill"></div></div>
  <span id="progress">0 / 0</span>
  <button id="undo" disabled title="withdraw your last judgement">Undo<kbd>u</kbd></button>
</header>
<main>
  <form id="login" class="card" hidden>
    <label class="field" for="annotator-input">Your name (judgements are recorded under it)</label>
    <input id="annotator-input" pattern="[A-Za-z0-9][A-Za-z0-9._@-]{0,63}" required>
    <button type="submit">Start</button>
  </form>
  <section id="task" hidden>
    <div class="card" id="prompt"></div>
    <div class="answers">
      <div class="card"><div class="role">Answer A</div><div class="text" id="answer-A"></div>
        <div class="rating" data-side="A">rate A</div></div>
      <div class="card"><div class="role">Answer B</div><div class="text" id="answer-B"></div>
        <div class="rating" data-side="B">rate B</div></div>
    </div>
    <div class="choices">
      <button id="choose-A" data-choice="A">A is better<kbd>a</kbd></button>
      <button id="choose-B" data-choice="B">B is better<kbd>b</kbd></button>
      <button id="choose-tie" data-choice="tie" class="secondary">Tie<kbd>t</kbd></button>
      <button id="choose-skip" data-choice="skip" class="secondary">Skip<kbd>s</kbd></button>
    </div>
    <div class="card">
      <label class="field" for="ideal">Ideal answer (optional; becomes supervised training data)
        <span class="small">start from <button type="button" id="copy-A">A</button>
        <button type="button" id="copy-B">B</button></span></label>
      <textarea id="ideal" rows="4"></textarea>
      <label class="field" for="note">Note (optional)</label>
      <textarea id="note" rows="2"></textarea>
    </div>
  </section>
  <div class="card" id="done-card" hidden>All tasks are judged. Thank you.</div>
  <div id="status" role="status"></div>
  <p class="small">Keys: <kbd>a</kbd>/<kbd>1</kbd> A better, <kbd>b</kbd>/<kbd>2</kbd> B better, <kbd>t</kbd> tie,
    <kbd>s</kbd> skip, <kbd>u</kbd> undo, <kbd>Esc</kbd> leave a text box. Sides are shuffled per task.</p>
</main>
<script src="/page.js"></script>
</body>
</html>
"""

PAGE_JS = r"""'use strict';
const params = new URLSearchParams(location.search);
const annotator = params.get('annotator');  // null: the server's --annotator
// The server refuses writes without it; other sites cannot read this page, so they cannot send it.
const token = document.querySelector('meta[name="whetstone-token"]').content;
let current = null;  // the state last received
let ratings = {};
let busy = false;
const $ = (id) => document.getElementById(id);

function setStatus(text, isError) {
  $('status').textContent = text;
  $('status').className = isError ? 'error' : '';
}

async function call(method, path, body) {
  const options = {method, headers: {'Content-Type': 'application/json', 'X-Whetstone-Token': token}};
  if (body !== undefined) options.body = JSON.stringify(body);
  const response = await fetch(path, options);
  const payload = await response.json();
  if (!response.ok) throw new Error(payload.error ? payload.error.message : response.statusText);
  return payload;
}

function buildRatings() {
  for (const row of document.querySelectorAll('.rating')) {
    for (let value = 1; value <= 5; value++) {
      const button = document.createElement('button');
      button.type = 'button';
      button.className = 'rate';
      button.textContent = String(value);
      button.dataset.side = row.dataset.side;
      button.dataset.value = String(value);
      button.addEventListener('click', () => {
        const side = row.dataset.side;
        ratings[side] = ratings[side] === value ? undefined : value;  // a second click clears it
        paintRatings();
      });
      row.appendChild(button);
    }
  }
}

function paintRatings() {
  for (const button of document.querySelectorAll('.rate')) {
    button.classList.toggle('on', ratings[button.dataset.side] === Number(button.dataset.value));
  }
}

function show(state, restore) {
  current = state;
  $('who').textContent = state.annotator;
  $('progress').textContent = state.done + ' / ' + state.total;
  $('progress-fill').style.width = (state.total ? 100 * state.done / state.total : 0) + '%';
  $('undo').disabled = !state.last;
  $('task').hidden = !state.task;
  $('done-card').hidden = !!state.task;
  if (!state.task) return;
  const prompt = $('prompt');
  prompt.replaceChildren();
  for (const message of state.task.prompt) {
    const role = document.createElement('div');
    role.className = 'role';
    role.textContent = message.role;
    const text = document.createElement('div');
    text.className = 'text';
    text.textContent = message.content;  // as text, never parsed as HTML: prompts and answers are untrusted
    prompt.append(role, text);
  }
  for (const answer of state.task.answers) $('answer-' + answer.side).textContent = answer.text;
  const old = restore && restore.task === state.task.id ? restore : null;
  ratings = old ? Object.assign({}, old.ratings) : {};
  $('ideal').value = old && old.ideal ? old.ideal : '';
  $('note').value = old && old.note ? old.note : '';
  paintRatings();
}

async function judge(choice) {
  if (busy || !current || !current.task) return;
  busy = true;
  const body = {task: current.task.id, choice, ratings: {}, ideal: $('ideal').value || null,
                note: $('note').value || null};
  for (const side of ['A', 'B']) if (ratings[side]) body.ratings[side] = ratings[side];
  if (annotator) body.annotator = annotator;
  try {
    show(await call('POST', '/api/judge', body));
    setStatus('saved: ' + choice, false);
  } catch (error) {
    setStatus('not saved: ' + error.message, true);
  } finally {
    busy = false;
  }
}

async function undo() {
  if (busy || !current || !current.last) return;
  busy = true;
  try {
    const state = await call('POST', '/api/undo', annotator ? {annotator} : {});
    show(state, state.undone);
    setStatus('undone: ' + state.undone.choice, false);
  } catch (error) {
    setStatus('undo failed: ' + error.message, true);
  } finally {
    busy = false;
  }
}

const KEYS = {a: 'A', '1': 'A', b: 'B', '2': 'B', t: 'tie', '0': 'tie', s: 'skip'};
document.addEventListener('keydown', (event) => {
  const typing = event.target instanceof HTMLTextAreaElement || event.target instanceof HTMLInputElement;
  if (event.key === 'Escape' && typing) { event.target.blur(); return; }
  if (typing || event.ctrlKey || event.metaKey || event.altKey) return;
  const key = event.key.toLowerCase();
  if (KEYS[key]) { event.preventDefault(); judge(KEYS[key]); }
  else if (key === 'u') { event.preventDefault(); undo(); }
});

for (const button of document.querySelectorAll('[data-choice]')) {
  button.addEventListener('click', () => judge(button.dataset.choice));
}
$('undo').addEventListener('click', undo);
for (const side of ['A', 'B']) {
  $('copy-' + side).addEventListener('click', () => { $('ideal').value = $('answer-' + side).textContent; });
}
$('login').addEventListener('submit', (event) => {
  event.preventDefault();
  params.set('annotator', $('annotator-input').value);
  location.search = params.toString();
});

buildRatings();
call('GET', '/api/state' + (annotator ? '?annotator=' + encodeURIComponent(annotator) : ''))
  .then((state) => show(state))
  .catch((error) => {
    if (!annotator) $('login').hidden = false;
    setStatus(error.message, true);
  });
"""
