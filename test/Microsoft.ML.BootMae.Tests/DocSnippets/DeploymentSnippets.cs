using System.Text.Json;
using Microsoft.ML.Data;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;

namespace Microsoft.ML.BootMae.Tests.DocSnippets;

// Code shown in docs/deployment.md (see EngineSnippets.cs for the rules); OnnxExportTests runs it in a temporary folder.
internal static class DeploymentSnippets
{
    public static void Export(BootMaeEncoder encoder, TransformerChain<BootMaeImageClassificationTransformer> model)
    {
        #region snippet:deployment-export
        // An encoder: features as BootMaeFeaturize computes them (Mean, Cls or Tokens; any block).
        encoder.ExportOnnx("encoder.onnx", BootMaePooling.Mean, sourceBlock: null);

        // A fine-tuned or linear-probed classifier (the last transformer of a fitted pipeline).
        model.LastTransformer.ExportOnnx("classifier.onnx");
        #endregion
    }

    public static void SavePipeline(MLContext ml, BootMaeArchitecture architecture, string imageFolder, IDataView data)
    {
        #region snippet:deployment-pipeline
        // LoadImages → ResizeImages(ImageSize², Fill) → ExtractPixels("pixels") → ApplyOnnxModel
        var pipeline = ml.Transforms.BootMaeOnnxInput(architecture, imageFolder, imagePathColumnName: "ImagePath")
            .Append(ml.Transforms.ApplyOnnxModel(new[] { "scores", "predicted" }, new[] { "pixels" }, "classifier.onnx"));
        ml.Model.Save(pipeline.Fit(data), data.Schema, "model.zip");
        #endregion
    }

    public static (List<float[]> Scores, List<long[]> Predicted) Serve()
    {
        #region snippet:deployment-serve
        var ml = new MLContext();
        var model = ml.Model.Load("model.zip", out _);
        var scored = model.Transform(ml.Data.LoadFromTextFile<ImageRow>("images.tsv", hasHeader: true));
        // float[] / long[] copy each row; a VBuffer from GetColumn is reused for the next row, so keep no VBuffer.
        var scores = scored.GetColumn<float[]>("scores").ToList();        // Vector<Single, 1, K>: K probabilities
        var predicted = scored.GetColumn<long[]>("predicted").ToList();   // Vector<Int64, 1>: the 0-based class
        #endregion
        return (scores, predicted);
    }

    public static (float[] Features, string[]? Names) RunDirectly(float[] pixels, int batch, int size)
    {
        #region snippet:deployment-onnxruntime
        using var session = new InferenceSession("encoder.onnx");
        var input = NamedOnnxValue.CreateFromTensor("pixels", new DenseTensor<float>(pixels, new[] { batch, 3, size, size }));
        using var results = session.Run(new[] { input });
        var features = results.First(r => r.Name == "features").AsTensor<float>();   // [batch, D]
        // Classifiers: the class names in the order of 'predicted'.
        var names = session.ModelMetadata.CustomMetadataMap.TryGetValue("bootmae.classNames", out var json)
            ? JsonSerializer.Deserialize<string[]>(json) : null;
        #endregion
        return (features.ToArray(), names);
    }

    /// <summary>A row of images.tsv.</summary>
    internal sealed class ImageRow
    {
        [LoadColumn(0)]
        public string ImagePath { get; set; } = string.Empty;
    }
}
