using Microsoft.ML.BootMae.Visualization;

namespace Microsoft.ML.BootMae.Tests.DocSnippets;

// Code shown in docs/*.md. Everything between "#region snippet:NAME" and "#endregion" must equal the ```csharp block
// marked <!-- snippet: NAME --> (DocSnippetTests). Code outside the regions only shrinks the runs for the tests.
#region snippet:engine-batch-source
/// <summary>Feeds the embedded Fashion-MNIST images to the engine, reshuffled every epoch.</summary>
public sealed class FashionMnistSource : IImageBatchSource
{
    private readonly FashionMnistSplit _split;

    public FashionMnistSource(FashionMnistSplit split) => _split = split;

    public long? Count => _split.Count;

    public IEnumerable<ImageBatch> ReadEpoch(int epoch, int batchSize, CancellationToken cancellationToken)
    {
        const int pixelsPerImage = 28 * 28;
        var order = Enumerable.Range(0, _split.Count).ToArray();
        new Random(epoch).Shuffle(order);
        for (int start = 0; start < order.Length; start += batchSize)
        {
            cancellationToken.ThrowIfCancellationRequested();
            int n = Math.Min(batchSize, order.Length - start);
            var pixels = new float[n * pixelsPerImage];   // [B, 1, 28, 28], values in [0, 1]
            var labels = new int[n];
            for (int i = 0; i < n; i++)
            {
                _split.GetImage(order[start + i]).CopyTo(pixels, i * pixelsPerImage);
                labels[i] = _split.Labels[order[start + i]];
            }

            yield return new ImageBatch(pixels, n, labels);
        }
    }
}
#endregion

internal static class EngineSnippets
{
    // Runs the engine-level pretraining of docs/api.md; tiny = true shrinks it to seconds.
    public static string PretrainWithTheEngine(bool tiny)
    {
        #region snippet:engine-pretrain-settings
        var architecture = BootMaeArchitecture.Tiny28;
        var settings = new BootMaePretrainerSettings
        {
            MaxEpochs = 20,
            BatchSize = 128,
            CheckpointDirectory = Path.Combine(Path.GetTempPath(), "bootmae-checkpoints"),
            ResumeFromCheckpoint = true,
        };
        var train = FashionMnistSample.LoadArrays(trainPerClass: 1000, testPerClass: 0).Train;
        #endregion
        if (tiny)
        {
            architecture = DocSnippetRunTests.TinyArchitecture;
            settings.MaxEpochs = 1;
            settings.BatchSize = 8;
            settings.Device = BootMaeDevice.Cpu;
            settings.CheckpointDirectory = Path.Combine(Path.GetTempPath(), "bootmae-doc-" + Guid.NewGuid().ToString("N"));
            train = FashionMnistSample.LoadArrays(trainPerClass: 2, testPerClass: 0).Train;
        }

        #region snippet:engine-pretrain-run
        var pretrainer = new BootMaePretrainer(architecture, settings);
        using BootMaeEncoder encoder = pretrainer.Train(
            new FashionMnistSource(train),
            metricsCallback: m => Console.WriteLine(m),
            log: Console.WriteLine);
        encoder.Save(Path.Combine(settings.CheckpointDirectory, "encoder.bootmae"));
        #endregion
        return settings.CheckpointDirectory;
    }

    // docs/api.md: compiled, not run (CurvesAndTensorBoardTests runs the sink).
    public static BootMaePretrainingEstimator.Options TensorBoardOptions()
    {
        #region snippet:tensorboard-sink
        var options = new BootMaePretrainingEstimator.Options
        {
            Architecture = BootMaeArchitecture.Tiny28,
            MaxEpochs = 20,

            // Live curves in TensorBoard (tensorboard --logdir runs), and a console line at each epoch end.
            MetricsCallback = BootMaeTensorBoard.Sink(Path.Combine("runs", "tiny28"))
                + (m => { if (m.IsEpochEnd) Console.WriteLine(m); }),
        };
        #endregion
        return options;
    }

    // docs/pytorch-interop.md: compiled, not run (it needs real weight files).
    public static void ImportOfficialWeights()
    {
        #region snippet:interop-import
        // An official BootMAE training checkpoint as run_pretraining.py saves it ('model', 'model_ema', 'optimizer', 'args', …):
        // the student is taken, the architecture inferred from the shapes, and each decision logged.
        using var encoder = BootMaeEncoder.FromPyTorch("checkpoint-799.pth", new BootMaePyTorchImportOptions { Log = Console.WriteLine });
        Console.WriteLine($"{encoder.Architecture.Depth} blocks, D = {encoder.EmbeddingDim}, {encoder.Architecture.Normalization}");

        // Its EMA teacher instead.
        using var teacher = BootMaeEncoder.FromPyTorch("checkpoint-799.pth", new BootMaePyTorchImportOptions { Model = BootMaeCheckpointModel.Teacher });

        // A timm ViT-B/16 (its names do not tell the normalisation, so say it), used at 384² (position table resampled).
        using var timm = BootMaeEncoder.FromPyTorch("vit_base_patch16_224.pth", new BootMaePyTorchImportOptions
        {
            Architecture = BootMaeArchitecture.VitBase16 with { ImageSize = 384 },
            Normalization = BootMaeNormalization.ImageNet,
        });

        // Hugging Face facebook/vit-mae-base (ViTMAEForPreTraining's pytorch_model.bin): names mapped, ImageNet mean/std.
        using var hf = BootMaeEncoder.FromPyTorch("pytorch_model.bin");
        #endregion
    }

    // docs/pytorch-interop.md: run by DocSnippetRunTests in a temporary folder.
    public static void SaveExportAndReimport(BootMaeEncoder encoder, string folder)
    {
        #region snippet:interop-export
        encoder.Save(Path.Combine(folder, "encoder.bootmae"));                 // BootMAE's own format (architecture + weights)
        encoder.ExportSafetensors(Path.Combine(folder, "encoder.safetensors")); // for PyTorch: official key names, float32

        using var reloaded = BootMaeEncoder.Load(Path.Combine(folder, "encoder.bootmae"));
        using var imported = BootMaeEncoder.FromPyTorch(Path.Combine(folder, "encoder.safetensors"), encoder.Architecture);
        #endregion
    }

    // docs/troubleshooting.md: run by DocSnippetRunTests.
    public static IReadOnlyList<string> ShowNativePreparation()
    {
        #region snippet:runtime-log
        BootMaeRuntime.EnsureTorchLoaded();   // throws BootMaeNativeLoadException (with this log and the fixes) on failure
        foreach (var line in BootMaeRuntime.PreparationLog)
        {
            Console.WriteLine(line);
        }
        #endregion
        return BootMaeRuntime.PreparationLog;
    }

    // docs/troubleshooting.md: compiled; the NaN path itself is covered by PretrainerTests.
    public static void HandleNaN(BootMaePretrainer pretrainer, IImageBatchSource source)
    {
        #region snippet:nan-handling
        try
        {
            using var encoder = pretrainer.Train(source);
        }
        catch (BootMaeTrainingException ex)
        {
            // "The pretraining loss became NaN at step 812 (epoch 3, learning rate 1.20E-003). Lower LearningRate or check
            //  the input images. The last good checkpoint is '/tmp/ckpt/step-00000800'."
            Console.Error.WriteLine(ex.Message);
        }
        #endregion
    }
}
