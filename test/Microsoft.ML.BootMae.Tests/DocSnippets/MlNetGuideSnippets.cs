using Microsoft.ML.Data;

namespace Microsoft.ML.BootMae.Tests.DocSnippets;

/// <summary>The row type docs/mlnet.md's example reads (train.tsv: ImagePath, Label).</summary>
public sealed class Row
{
    [LoadColumn(0)]
    public string ImagePath { get; set; } = string.Empty;

    [LoadColumn(1)]
    public string Label { get; set; } = string.Empty;
}

// docs/mlnet.md: compiled, not run (it trains a full Tiny28 model for 20 epochs).
internal static class MlNetGuideSnippets
{
    public static void PretrainThenSdca(string imageFolder)
    {
        #region snippet:mlnet-pipeline
        var ml = new MLContext(seed: 1);
        var data = ml.Data.LoadFromTextFile<Row>("train.tsv", hasHeader: true, separatorChar: '\t');
        var pipeline = ml.Transforms.Conversion.MapValueToKey("Label")
            .Append(ml.Transforms.LoadRawImageBytes("Image", imageFolder, "ImagePath"))
            .Append(ml.Transforms.BootMaePretrain(new BootMaePretrainingEstimator.Options
            {
                Architecture = BootMaeArchitecture.Tiny28, MaxEpochs = 20, BatchSize = 64,
            }))
            .AppendCacheCheckpoint(ml) // the encoder would otherwise rerun on every SDCA pass
            .Append(ml.MulticlassClassification.Trainers.SdcaMaximumEntropy("Label", "Features"));
        using var model = pipeline.Fit(data);
        ml.Model.SaveBootMae(model, data.Schema, "model.zip");
        using var loaded = (IDisposable)ml.Model.LoadBootMae("model.zip", out var schema);
        #endregion
    }
}
