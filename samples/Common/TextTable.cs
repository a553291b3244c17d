namespace BootMae.Samples;

/// <summary>Prints a plain-text table with aligned columns (numbers right-aligned).</summary>
public static class TextTable
{
    /// <summary>Writes <paramref name="headers"/> and <paramref name="rows"/> to <paramref name="output"/>.</summary>
    public static void Print(TextWriter output, IReadOnlyList<string> headers, IEnumerable<IReadOnlyList<string>> rows)
    {
        var all = rows.ToList();
        var widths = headers.Select((h, i) => Math.Max(h.Length, all.Count == 0 ? 0 : all.Max(r => r[i].Length))).ToArray();
        bool[] numeric = headers.Select((_, i) => all.Count > 0 && all.All(r => r[i].Length > 0 && (char.IsDigit(r[i][0]) || r[i][0] is '-' or '+'))).ToArray();
        string Format(IReadOnlyList<string> cells) =>
            "| " + string.Join(" | ", cells.Select((c, i) => numeric[i] ? c.PadLeft(widths[i]) : c.PadRight(widths[i]))) + " |";

        output.WriteLine(Format(headers));
        output.WriteLine("|" + string.Join("|", widths.Select((w, i) => numeric[i] ? new string('-', w + 1) + ":" : new string('-', w + 2))) + "|");
        foreach (var row in all)
        {
            output.WriteLine(Format(row));
        }
    }
}
