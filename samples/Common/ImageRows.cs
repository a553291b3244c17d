using Microsoft.ML.Data;

namespace BootMae.Samples;

/// <summary>A row of an image list: a path (relative to the image folder) and a class name, as in Fashion-MNIST's TSV files.</summary>
public sealed class ImageRow
{
    /// <summary>Path of the image file.</summary>
    [LoadColumn(0)]
    public string ImagePath { get; set; } = string.Empty;

    /// <summary>Class name; empty when unlabelled.</summary>
    [LoadColumn(1)]
    public string Label { get; set; } = string.Empty;

    /// <summary>Reads a TSV with a header line and the columns ImagePath, Label.</summary>
    public static List<ImageRow> ReadTsv(string path) => File.ReadLines(path).Skip(1)
        .Where(line => line.Length > 0)
        .Select(line => line.Split('\t'))
        .Select(cells => new ImageRow { ImagePath = cells[0], Label = cells.Length > 1 ? cells[1] : string.Empty })
        .ToList();

    /// <summary>The first <paramref name="perClass"/> rows of every class, in file order.</summary>
    public static List<ImageRow> Balanced(IEnumerable<ImageRow> rows, int perClass) =>
        rows.GroupBy(r => r.Label).SelectMany(g => g.Take(perClass)).ToList();
}

/// <summary>An image path without a label, for self-supervised pretraining.</summary>
public sealed class UnlabeledImageRow
{
    /// <summary>Path of the image file.</summary>
    public string ImagePath { get; set; } = string.Empty;
}

/// <summary>Classifier output after <c>MapKeyToValue("PredictedLabel")</c>.</summary>
public sealed class ImagePrediction
{
    /// <summary>The predicted class name.</summary>
    public string PredictedLabel { get; set; } = string.Empty;

    /// <summary>Probability of each class, in the label's key order.</summary>
    public float[] Score { get; set; } = Array.Empty<float>();
}
