namespace Microsoft.ML.BootMae.Training;

/// <summary>The labels of a classification batch, checked before they reach the loss (a bad label names its set).</summary>
internal static class BatchLabels
{
    /// <summary>The batch's labels as int64, checked: present and in [0, <paramref name="numClasses"/>).</summary>
    public static long[] Check(ImageBatch batch, string set, int numClasses)
    {
        if (batch.Labels is null)
        {
            throw new InvalidOperationException($"The {set} set has no labels; classification needs a 0-based label per image.");
        }

        var labels = new long[batch.Count];
        for (int i = 0; i < batch.Count; i++)
        {
            int label = batch.Labels[i];
            if (label < 0 || label >= numClasses)
            {
                throw new InvalidOperationException($"A {set} label is {label}, outside [0, {numClasses - 1}] for {numClasses} classes.");
            }

            labels[i] = label;
        }

        return labels;
    }
}
