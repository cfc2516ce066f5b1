// The player: decodes JPEG frames as they arrive and draws them on a canvas at the stream's fps from a small buffer.
export class Player {
  constructor(canvas, { onFrame } = {}) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.onFrame = onFrame || (() => {});
    this.fps = 16;
    this.prebuffer = 2;          // frames buffered before playback (re)starts
    this.queue = [];             // {chunk, frame, bitmap: Promise<ImageBitmap>, ready}
    this.reset();
    requestAnimationFrame((t) => this.tick(t));
  }

  reset() {
    for (const item of this.queue) item.bitmap.then((b) => b.close()).catch(() => {});
    this.queue = [];
    this.playing = false;
    this.expecting = false;      // frames are still due (a flight is on)
    this.stalled = false;
    this.stalls = 0;
    this.shown = 0;
    this.played = -1;            // global index of the last frame shown: the playback position the server is told
    this.nextAt = 0;
    this.shownTimes = [];
  }

  configure(fps, width, height) {
    this.fps = fps;
    this.canvas.width = width;
    this.canvas.height = height;
    this.canvas.style.setProperty("--aspect", `${width} / ${height}`);
  }

  push(chunk, frame, jpegBytes) {
    const item = { chunk, frame, ready: false, failed: false };
    item.bitmap = createImageBitmap(new Blob([jpegBytes], { type: "image/jpeg" }));
    item.bitmap.then(() => { item.ready = true; }, () => { item.failed = true; });
    this.queue.push(item);
  }

  get buffered() { return this.queue.length; }

  get displayFps() {
    const now = performance.now();
    this.shownTimes = this.shownTimes.filter((t) => now - t < 1000);
    return this.shownTimes.length;
  }

  tick(now) {
    requestAnimationFrame((t) => this.tick(t));
    while (this.queue.length && this.queue[0].failed) this.queue.shift();
    if (!this.playing) {
      const readyCount = this.queue.filter((item) => item.ready).length;
      if (readyCount >= this.prebuffer || (readyCount > 0 && !this.expecting)) {
        this.playing = true;
        this.nextAt = now;
      } else {
        return;
      }
    }
    if (now < this.nextAt) return;
    const head = this.queue[0];
    if (!head || !head.ready) {
      if (this.expecting && !this.stalled && !head) { this.stalled = true; this.stalls += 1; }
      if (!head) this.playing = false;   // rebuffer
      return;
    }
    this.queue.shift();
    this.played = Math.max(this.played, head.frame);
    head.bitmap.then((bitmap) => {
      this.ctx.drawImage(bitmap, 0, 0, this.canvas.width, this.canvas.height);
      bitmap.close();
      this.shown += 1;
      this.shownTimes.push(performance.now());
      this.onFrame(head.chunk, head.frame);
    });
    this.stalled = false;
    const period = 1000 / this.fps;
    this.nextAt = now - this.nextAt > period ? now + period : this.nextAt + period;
  }
}
