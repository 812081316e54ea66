/**
 * A per-file bound on the work a parser may do: table entries read, items linked, ranges
 * compared. Parsers are linear in their input (STYLE 11), but a 1.6 MB file can still declare
 * millions of entries; a file that would cost more than its budget is refused with 415
 * `unsupported_structure` instead of holding the event loop (THREATS 35). `spent` lets tests
 * bound the work a hostile file causes without timing it.
 */
import { reject } from '../errors.js';

/** Entries a real file stays far below: a two-hour 60 fps video has ~800,000 samples. */
export const defaultWorkUnits = 20_000_000;

export class WorkBudget {
  spent = 0;

  constructor(
    private readonly format: string,
    readonly units: number = defaultWorkUnits,
  ) {}

  /** Counts `units` of work; throws once the file has cost more than its budget. */
  spend(units: number): void {
    this.spent += units;
    if (this.spent > this.units) {
      throw reject.structure(this.format, `its tables need more than ${this.units} steps to read`);
    }
  }
}
