"""Build-time check that the delta-spark jars work with this Spark: write, read back, time travel."""

import sys

from pyspark.sql import SparkSession

path = sys.argv[1]
spark = SparkSession.builder.appName("coldstart-delta-smoke").getOrCreate()
spark.range(5).write.format("delta").save(path)
spark.range(5, 8).write.format("delta").mode("append").save(path)
assert spark.read.format("delta").load(path).count() == 8
assert spark.read.format("delta").option("versionAsOf", 0).load(path).count() == 5
# hadoop-aws is on the classpath (s3a:// URIs resolve to S3AFileSystem).
jvm = spark.sparkContext._jvm
assert jvm.java.lang.Class.forName("org.apache.hadoop.fs.s3a.S3AFileSystem") is not None
print("delta smoke test ok, Spark", spark.version)
spark.stop()
