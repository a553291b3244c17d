using System.Globalization;
using OxyPlot;
using OxyPlot.Axes;
using OxyPlot.Legends;
using OxyPlot.Series;
using OxyPlot.SkiaSharp;
using SkiaSharp;

namespace Microsoft.ML.BootMae.Visualization;

/// <summary>
/// A row of line charts against one shared x axis, saved as a PNG: the charting part of
/// <see cref="BootMaePictures.TrainingCurves(IReadOnlyList{TrainingCurvePoint}, string, string?)"/>. OxyPlot draws each
/// panel (axes, ticks, grid, legend) on SkiaSharp; this class only lays the panels out and styles them.
/// </summary>
internal static class LineChart
{
    // Every panel's size in pixels.
    private static readonly SKSize PanelSize = new(500, 380);

    /// <summary>One curve: its legend name, colour and one y value per x (NaN where not logged: a gap).</summary>
    public sealed record Curve(string Name, SKColor Color, double[] Values);

    /// <summary>One chart: its title, y-axis label, curves, and whether it shows a legend.</summary>
    public sealed record Panel(string Title, string YLabel, Curve[] Curves)
    {
        /// <summary>Whether the chart shows a legend of its curves (top right, inside).</summary>
        public bool Legend { get; init; }
    }

    /// <summary>Draws <paramref name="panels"/> side by side (500 × 380 each) under an optional title and saves the PNG.</summary>
    public static string SaveRow(double[] xs, string xLabel, IReadOnlyList<Panel> panels, string path, string? title)
    {
        var top = PictureKit.Margin + (title is null ? 0 : PictureKit.TitleSize + 14);
        var width = (PictureKit.Margin * 2) + (panels.Count * PanelSize.Width) + ((panels.Count - 1) * PictureKit.Gap);
        using var surface = SKSurface.Create(new SKImageInfo((int)width, (int)(top + PanelSize.Height + PictureKit.Margin)));
        var canvas = surface.Canvas;
        canvas.Clear(PictureKit.Background);
        if (title is not null)
        {
            using var titlePaint = PictureKit.TextPaint(PictureKit.TitleSize, bold: true);
            PictureKit.DrawCentered(canvas, title, width / 2, PictureKit.Margin + PictureKit.TitleSize, titlePaint);
        }

        for (var i = 0; i < panels.Count; i++)
        {
            Draw(canvas, SKRect.Create(PictureKit.Margin + (i * (PanelSize.Width + PictureKit.Gap)), top, PanelSize.Width, PanelSize.Height), panels[i], xs, xLabel);
        }

        return PictureKit.Save(surface, path);
    }

    private static void Draw(SKCanvas canvas, SKRect bounds, Panel panel, double[] xs, string xLabel)
    {
        var font = PictureKit.Regular.FamilyName;
        var ink = Oxy(PictureKit.Ink);
        var grid = OxyColor.FromRgb(0xE6, 0xE6, 0xE6);
        var model = new PlotModel
        {
            Title = panel.Title, TitleFontSize = 16, DefaultFont = font, DefaultFontSize = 12, TextColor = ink, Background = OxyColors.White,
            PlotAreaBorderColor = ink, PlotAreaBorderThickness = new OxyThickness(1, 0, 0, 1), Padding = new OxyThickness(8, 6, 14, 6),
        };
        model.Axes.Add(new LinearAxis
        {
            Position = AxisPosition.Bottom, Title = xLabel, TitleFontSize = 13, MajorGridlineStyle = LineStyle.Solid, MajorGridlineColor = grid,
            TicklineColor = ink, AxislineColor = ink, MinimumPadding = 0, MaximumPadding = 0, StringFormat = "#,0.##",
        });
        model.Axes.Add(new LinearAxis
        {
            Position = AxisPosition.Left, Title = panel.YLabel, TitleFontSize = 13, MajorGridlineStyle = LineStyle.Solid, MajorGridlineColor = grid,
            TicklineColor = ink, AxislineColor = ink, MinimumPadding = 0.05, MaximumPadding = 0.05, LabelFormatter = Tick,
        });

        foreach (var s in panel.Curves.Where(s => s.Values.Any(double.IsFinite)))
        {
            var line = new LineSeries
            {
                Title = s.Name, Color = Oxy(s.Color), StrokeThickness = 2, LineJoin = LineJoin.Round,

                // A lone point (one step logged) would not show as a line, so mark it.
                MarkerType = s.Values.Count(double.IsFinite) == 1 ? MarkerType.Circle : MarkerType.None, MarkerFill = Oxy(s.Color), MarkerSize = 3,
            };

            // Undefined points (NaN values) break the line, so a value not logged leaves a gap.
            line.Points.AddRange(xs.Select((x, i) => double.IsFinite(x) && double.IsFinite(s.Values[i]) ? new DataPoint(x, s.Values[i]) : DataPoint.Undefined));
            model.Series.Add(line);
        }

        if (panel.Legend && model.Series.Count > 0)
        {
            model.Legends.Add(new Legend
            {
                LegendPosition = LegendPosition.TopRight, LegendPlacement = LegendPlacement.Inside, LegendBackground = OxyColor.FromAColor(230, OxyColors.White),
                LegendBorder = Oxy(PictureKit.FrameGrey), LegendFontSize = 12, LegendSymbolLength = 20,
            });
        }

        // Text shaping would need HarfBuzz's native library, which SkiaSharp's Linux assets do not bring; plain
        // Latin labels do not need it.
        using var context = new SkiaRenderContext { RenderTarget = RenderTarget.PixelGraphic, SkCanvas = canvas, UseTextShaping = false };
        canvas.Save();
        canvas.ClipRect(bounds);
        canvas.Translate(bounds.Left, bounds.Top);
        ((IPlotModel)model).Update(true);
        ((IPlotModel)model).Render(context, new OxyRect(0, 0, bounds.Width, bounds.Height));
        canvas.Restore();
    }

    // Plain decimals, and scientific notation for learning rates and other tiny or huge values.
    private static string Tick(double value) =>
        value == 0 ? "0"
        : Math.Abs(value) < 1e-3 || Math.Abs(value) >= 1e6 ? value.ToString("0.##E+0", CultureInfo.InvariantCulture)
        : value.ToString("#,0.#####", CultureInfo.InvariantCulture);

    private static OxyColor Oxy(SKColor color) => OxyColor.FromArgb(color.Alpha, color.Red, color.Green, color.Blue);
}
