// Keyboard and gamepad input, mapped with the bindings from GET /api/config (server/bindings.py holds them).
// Keys by KeyboardEvent.code, no auto-repeat, captured only while the player has focus, all released on blur,
// hidden tab and context menu. Gamepads are polled in requestAnimationFrame with a radial dead zone per stick.
export class Input {
  constructor(target, bindings, numActions, onChange) {
    this.target = target;
    this.numActions = numActions;
    this.onChange = onChange;
    this.keyAction = new Map(bindings.keyboard.map((k) => [k.code, k.index]));
    this.keyMagnitude = bindings.keyboard_magnitude;
    this.pad = bindings.gamepad;
    this.pressed = new Set();          // codes held
    this.padMags = new Array(numActions).fill(0);
    this.padName = null;
    this.last = JSON.stringify(this.state());

    target.addEventListener("keydown", (e) => this.key(e, true));
    target.addEventListener("keyup", (e) => this.key(e, false));
    target.addEventListener("blur", () => this.releaseAll());
    target.addEventListener("contextmenu", () => this.releaseAll());
    window.addEventListener("blur", () => this.releaseAll());
    document.addEventListener("visibilitychange", () => { if (document.hidden) this.releaseAll(); });
    requestAnimationFrame(() => this.poll());
  }

  key(e, down) {
    if (!this.keyAction.has(e.code)) return;
    e.preventDefault();
    if (e.repeat) return;
    if (down) this.pressed.add(e.code); else this.pressed.delete(e.code);
    this.changed();
  }

  releaseAll() {
    if (this.pressed.size === 0) return;
    this.pressed.clear();
    this.changed();
  }

  poll() {
    requestAnimationFrame(() => this.poll());
    const pads = navigator.getGamepads ? Array.from(navigator.getGamepads() || []) : [];
    const pad = pads.find((p) => p && p.connected);
    const mags = new Array(this.numActions).fill(0);
    this.padName = pad ? pad.id : null;
    if (pad) {
      for (const stick of this.pad.sticks) {
        const x = pad.axes[stick.x_axis] || 0, y = pad.axes[stick.y_axis] || 0;
        const r = Math.hypot(x, y);
        if (r <= this.pad.dead_zone) continue;
        const scale = Math.min(1, (r - this.pad.dead_zone) / (1 - this.pad.dead_zone)) / r;
        for (const [axis, value] of [["x", x * scale], ["y", y * scale]]) {
          const name = value < 0 ? stick[axis].negative : stick[axis].positive;
          const index = this.pad.action_index[name];
          mags[index] = Math.max(mags[index], Math.min(1, Math.abs(value)));
        }
      }
    }
    if (mags.some((m, i) => m !== this.padMags[i])) {
      this.padMags = mags;
      this.changed();
    }
  }

  state() {
    const flags = new Array(this.numActions).fill(0);
    const mags = new Array(this.numActions).fill(0);
    for (const code of this.pressed) {
      const i = this.keyAction.get(code);
      flags[i] = 1;
      mags[i] = Math.max(mags[i], this.keyMagnitude[i]);
    }
    this.padMags.forEach((m, i) => {
      if (m > 0) { flags[i] = 1; mags[i] = Math.max(mags[i], m); }
    });
    return { flags, mags };
  }

  changed() {
    const state = this.state();
    const text = JSON.stringify(state);
    if (text === this.last) return;
    const before = JSON.parse(this.last);
    this.last = text;
    this.onChange(state, before);
  }
}
